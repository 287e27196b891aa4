"""`evolver init --pytest REPO --target FILE` on the shipped example repository (tasks/examples/slowstats):
the task it writes loads, `evolver eval` runs it in the sandbox, and a faster candidate shows a shorter benchmark
duration; bad input exits with code 2 and a clear message."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from evolver import api
from evolver.cli import main
from evolver.errors import UserInputError
from evolver.init_task import init_pytest_task
from evolver.task import load_task

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tasks" / "examples" / "slowstats"
BENCH = "test_bench_window.py::test_bench_moving_max_large"

FAST_WINDOW = '''
from collections import deque


def moving_max(values, width):
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    result, window = [], deque()
    for i, value in enumerate(values):
        while window and values[window[-1]] <= value:
            window.pop()
        window.append(i)
        if window[0] <= i - width:
            window.popleft()
        if i >= width - 1:
            result.append(values[window[0]])
    return result
'''


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    copy = tmp_path / "slowstats"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_init_writes_a_task_that_eval_runs(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = _files(repo)
    out = tmp_path / "task"
    code = main(["init", "--pytest", str(repo), "--target", "slowstats/window.py", "--out", str(out), "--json"])
    assert code == 0
    written = json.loads(capsys.readouterr().out)
    assert written["benchmarks"] == [BENCH] and len(written["tests"]) == 11
    assert _files(repo) == before, "init must not write into the repository"

    task = load_task(out)
    assert task.kind == "pytest" and task.mutable == ("slowstats/window.py",)
    assert task.objectives == {"score": "max", "duration_s": "min"}
    assert (task.evolve.frontier, task.evolve.accept) == ("objective", "ties")
    assert (out / "seed" / "slowstats" / "window.py").read_bytes() == before["slowstats/window.py"]
    assert not (out / "seed" / "tests").exists() and (out / "tests" / "test_window.py").is_file()
    splits = tomllib.loads((out / "instances.toml").read_text(encoding="utf-8"))
    assert splits["train"] == splits["val"] == written["tests"]

    seed = {r.instance: r for r in api.evaluate(out, run_dir=tmp_path / "run", backend="process",
                                                use_cache=False).results}
    assert set(seed) == set(written["tests"])
    assert all(r.status == "ok" and r.score == 1.0 for r in seed.values()), [r.feedback for r in seed.values()]
    assert seed[BENCH].objectives["duration_s"] > 0

    # A faster candidate (O(n) instead of O(n * width)), as a commit of another repository with the seed's
    # layout: same tests pass, the benchmark runs in a fraction of the time.
    cand = tmp_path / "candidate"
    shutil.copytree(out / "seed", cand)
    (cand / "slowstats" / "window.py").write_text(FAST_WINDOW, encoding="utf-8")
    git = ["git", "-C", str(cand), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fast"], check=True)
    fast = {r.instance: r for r in api.evaluate(out, run_dir=tmp_path / "run", backend="process", use_cache=False,
                                                repo_path=cand).results}
    assert all(r.status == "ok" for r in fast.values()), [r.feedback for r in fast.values() if not r.ok]
    assert fast[BENCH].objectives["duration_s"] < seed[BENCH].objectives["duration_s"] / 3


def test_init_with_a_wrong_candidate_fails_its_tests(repo: Path, tmp_path: Path) -> None:
    (repo / "slowstats" / "window.py").write_text(
        "def moving_max(values, width):\n    return [max(values[i:i + width]) for i in range(len(values))]\n",
        encoding="utf-8")
    result = init_pytest_task(repo, "slowstats/window.py", out=tmp_path / "task")
    assert result.name == "slowstats" and result.seed_files == 3
    by = {r.instance: r for r in api.evaluate(result.task_dir, run_dir=tmp_path / "run", backend="process",
                                              use_cache=False).results}
    assert by["test_window.py::test_example"].status == "failed"
    assert "moving_max" in by["test_window.py::test_example"].feedback
    assert by["test_window.py::test_whole_list"].status == "failed"
    assert by["test_window.py::test_window_longer_than_list"].status == "failed"


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "slowstats/missing.py"], "--target: expected a .py file inside"),
    (["--target", "README.md"], "--target: expected a .py file inside"),
    (["--target", "tests/test_window.py"], "found a file in the tests folder"),
    (["--target", "slowstats/window.py", "--tests", "spec"], "--tests: expected the repository's pytest folder"),
    (["--target", "slowstats/window.py", "--name", "bad name"], "--name: expected letters"),
])
def test_bad_input_exits_2(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                           message: str) -> None:
    assert main(["init", "--pytest", str(repo), "--out", str(tmp_path / "task"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "task").exists()


def test_existing_out_needs_force(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "task"
    init_pytest_task(repo, "slowstats/window.py", out=out)
    with pytest.raises(UserInputError, match="exists; pass --force"):
        init_pytest_task(repo, "slowstats/window.py", out=out)
    (repo / "slowstats" / "extra.py").write_text("X = 1\n", encoding="utf-8")
    init_pytest_task(repo, "slowstats/window.py", out=out, force=True)
    assert (out / "seed" / "slowstats" / "extra.py").is_file()
    other = tmp_path / "not-a-task"
    other.mkdir()
    (other / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserInputError, match="not a task folder"):
        init_pytest_task(repo, "slowstats/window.py", out=other, force=True)
    assert (other / "keep.txt").is_file()


def test_tests_that_do_not_collect_are_a_clear_error(repo: Path, tmp_path: Path) -> None:
    (repo / "tests" / "test_broken.py").write_text("import no_such_module_anywhere\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="expected pytest to collect the tests"):
        init_pytest_task(repo, "slowstats/window.py", out=tmp_path / "task")
    assert not (tmp_path / "task").exists()
