"""task.toml validation: every mistake exits 2 with one line naming file, key, expectation and finding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evolver.errors import TaskError
from evolver.task import glob_match, load_task

GOOD_TOML = """
[task]
mutable = ["sol.py"]
[evaluate]
timeout_s = 5
"""


def make_task(root: Path, toml: str = GOOD_TOML, evaluator: bool = True, instances: str | None = None) -> Path:
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "sol.py").write_text("def f(x):\n    return x\n")
    (root / "task.toml").write_text(toml)
    if evaluator:
        (root / "evaluate.py").write_text("def produce(i):\n    return 1\n\ndef judge(a, b, c, d):\n    return 1.0\n")
    (root / "instances.toml").write_text(instances if instances is not None else 'train = ["a", "b"]\n')
    return root


def test_good_task_has_documented_defaults(tmp_path: Path) -> None:
    task = load_task(make_task(tmp_path / "t"))
    assert task.name == "t"
    assert task.kind == "python" and task.evaluator == "evaluate.py"
    assert task.objectives == {"score": "max"} and task.primary == "score"
    assert task.sandbox.backend == "auto" and task.sandbox.memory_mb == 1024
    assert task.timeout_s == 5.0 and task.profile is False and task.repeats == 1
    assert task.instances is not None and task.instances.train == ("a", "b")
    assert task.is_mutable("sol.py") and not task.is_mutable("other.py")
    assert [p.name for p in task.task_files()] == ["evaluate.py", "instances.toml", "task.toml"]


@pytest.mark.parametrize(
    ("toml", "key", "found"),
    [
        ("[task]\nmutable = ['sol.py']\ncolour = 'red'\n", "[task] colour", "unknown key 'colour'"),
        ("[task]\nmutable = ['sol.py']\n[extra]\n", "[extra]", "unknown section"),
        ("[task]\nmutable = ['sol.py']\nseed = 'nope'\n", "[task] seed", "'nope' does not exist"),
        ("[task]\nmutable = ['*.rs']\n", "[task] mutable", "'*.rs' matches nothing"),
        ("[task]\nmutable = []\n", "[task] mutable", "[]"),
        ("[task]\nmutable = ['sol.py']\n[objectives]\nscore = 'up'\n", "[objectives] score", "'up'"),
        ("[task]\nmutable = ['sol.py']\n[evaluate]\nevaluator = 'missing.py'\n", "[evaluate] evaluator",
         "'missing.py' does not exist"),
        ("[task]\nmutable = ['sol.py']\n[evaluate]\ntimeout_s = 'soon'\n", "[evaluate] timeout_s", "'soon'"),
        ("[task]\nmutable = ['sol.py']\n[evaluate]\ntimeout_s = -1\n", "[evaluate] timeout_s", "-1"),
        ("[task]\nmutable = ['sol.py']\n[evaluate]\nprofile = 'yes'\n", "[evaluate] profile", "'yes'"),
        ("[task]\nmutable = ['sol.py']\n[evaluate]\nkind = 'shell'\n", "[evaluate] kind", "'shell'"),
        ("[task]\nmutable = ['sol.py']\n[sandbox]\nbackend = 'vm'\n", "[sandbox] backend", "'vm'"),
        ("[task]\nmutable = ['sol.py']\n[sandbox]\nmemory_mb = true\n", "[sandbox] memory_mb", "True"),
        ("[task]\nmutable = ['sol.py']\n[evolve]\nfrontier = 'islands'\n", "[evolve] frontier", "'islands'"),
        ("[task]\nmutable = ['sol.py']\n[evolve]\nminibatch = 0\n", "[evolve] minibatch", "0"),
        ("[task]\nmutable = ['sol.py']\n[evolve]\nalways_in_minibatch = ['a', 'zz']\n",
         "[evolve] always_in_minibatch", "'zz'"),
        ("[task]\nmutable = ['sol.py']\n[evolve]\nrace_confidence = 1\n", "[evolve] race_confidence", "1"),
        ("[task]\nmutable = ['sol.py']\n[objectives]\ncost = { role = 'gate', at_most = 'x' }\n",
         "[objectives] cost.at_most", "'x'"),
        ("[task\n", "(syntax)", "Expected"),
    ],
)
def test_bad_task_toml(tmp_path: Path, toml: str, key: str, found: str) -> None:
    root = make_task(tmp_path / "t", toml)
    with pytest.raises(TaskError) as err:
        load_task(root)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(root / "task.toml")), message
    assert err.value.key == key
    assert found in err.value.found, message
    assert "expected" in message


def test_missing_evaluator_is_named(tmp_path: Path) -> None:
    root = make_task(tmp_path / "t", evaluator=False)
    with pytest.raises(TaskError, match=r"\[evaluate\] evaluator: expected an existing file"):
        load_task(root)


@pytest.mark.parametrize(
    ("instances", "key"),
    [("train = ['a', 'a']\n", "train"), ("dev = ['a']\n", "dev"), ("train = [1]\n", "train"),
     ("", "train/val/test")],
)
def test_bad_instances_file(tmp_path: Path, instances: str, key: str) -> None:
    root = make_task(tmp_path / "t", instances=instances)
    with pytest.raises(TaskError) as err:
        load_task(root)
    assert err.value.file.endswith("instances.toml") and err.value.key == key


def test_missing_task_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="no such folder"):
        load_task(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match=r"no task\.toml"):
        load_task(tmp_path / "empty")


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    root = make_task(tmp_path / "t", "[task]\nmutable = ['nothing.py']\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "evolver.cli", "eval", str(root), "--run", str(run_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "[task] mutable" in lines[0] and "matches nothing" in lines[0]
    assert not run_dir.exists()


def test_digest_changes_with_evaluator_not_with_seed(tmp_path: Path) -> None:
    root = make_task(tmp_path / "t")
    d1 = load_task(root).digest
    (root / "seed" / "sol.py").write_text("def f(x):\n    return 2 * x\n")
    assert load_task(root).digest == d1
    (root / "evaluate.py").write_text((root / "evaluate.py").read_text() + "\n# changed\n")
    assert load_task(root).digest != d1


def test_glob_semantics() -> None:
    assert glob_match("a/b.py", "**/*.py") and glob_match("b.py", "**/*.py")
    assert not glob_match("a/b.py", "*.py") and glob_match("a/b.py", "a/*.py")
