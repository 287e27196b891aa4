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


WRONG_WINDOW = "def moving_max(values, width):\n    return [max(values[i:i + width]) for i in range(len(values))]\n"


def _commit_candidate(seed: Path, dest: Path, window: str) -> Path:
    """A candidate as a commit of another repository with the seed's layout and `window` as window.py."""
    shutil.copytree(seed, dest)
    (dest / "slowstats" / "window.py").write_text(window, encoding="utf-8")
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "candidate"], check=True)
    return dest


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Init evaluates the seed with the task's backend ("auto"): the process sandbox keeps these tests off Docker.
    monkeypatch.setenv("EVOLVER_BACKEND", "process")
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
    # one validation runs the 11 tests; the seed and 5 accepted children with their minibatches: 11 + 5 * (11 + 6)
    assert written["validation_calls"] == 11 and written["suggested_budget_evals"] == 96
    assert _files(repo) == before, "init must not write into the repository"

    task = load_task(out)
    assert task.kind == "pytest" and task.mutable == ("slowstats/window.py",)
    assert task.objectives == {"score": "max", "duration_s": "min"}
    assert (task.evolve.frontier, task.evolve.accept) == ("objective", "ties")
    assert task.objective_specs["score"].role == "gate" and task.objective_specs["score"].at_least == 1.0
    assert task.objective_specs["duration_s"].tolerance == 0.05 and task.accept_rule == "ties"
    assert task.evolve.always_in_minibatch == (BENCH,)  # the benchmark is in every minibatch
    assert (out / "seed" / "slowstats" / "window.py").read_bytes() == before["slowstats/window.py"]
    assert not (out / "seed" / "tests").exists() and (out / "tests" / "test_window.py").is_file()
    splits = tomllib.loads((out / "instances.toml").read_text(encoding="utf-8"))
    assert splits["train"] == written["tests"] and "val" not in splits  # validated on the suite itself

    seed = {r.instance: r for r in api.evaluate(out, run_dir=tmp_path / "run", backend="process",
                                                use_cache=False).results}
    assert set(seed) == set(written["tests"])
    assert all(r.status == "ok" and r.score == 1.0 for r in seed.values()), [r.feedback for r in seed.values()]
    assert seed[BENCH].objectives["duration_s"] > 0

    # A faster candidate (O(n) instead of O(n * width)), as a commit of another repository with the seed's
    # layout: same tests pass, the benchmark runs in a fraction of the time.
    cand = _commit_candidate(out / "seed", tmp_path / "candidate", FAST_WINDOW)
    fast = {r.instance: r for r in api.evaluate(out, run_dir=tmp_path / "run", backend="process", use_cache=False,
                                                repo_path=cand).results}
    assert all(r.status == "ok" for r in fast.values()), [r.feedback for r in fast.values() if not r.ok]
    assert fast[BENCH].objectives["duration_s"] < seed[BENCH].objectives["duration_s"] / 3


def test_a_wrong_candidate_fails_its_tests(repo: Path, tmp_path: Path) -> None:
    result = init_pytest_task(repo, "slowstats/window.py", out=tmp_path / "task")
    assert result.name == "slowstats" and result.seed_files == 3
    cand = _commit_candidate(result.task_dir / "seed", tmp_path / "candidate", WRONG_WINDOW)
    by = {r.instance: r for r in api.evaluate(result.task_dir, run_dir=tmp_path / "run", backend="process",
                                              use_cache=False, repo_path=cand).results}
    assert by["test_window.py::test_example"].status == "failed"
    assert "moving_max" in by["test_window.py::test_example"].feedback
    assert by["test_window.py::test_whole_list"].status == "failed"
    assert by["test_window.py::test_window_longer_than_list"].status == "failed"


def test_tests_failing_on_the_seed_stop_init_unless_allowed(repo: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    (repo / "slowstats" / "window.py").write_text(WRONG_WINDOW, encoding="utf-8")
    out = tmp_path / "task"
    assert main(["init", "--pytest", str(repo), "--target", "slowstats/window.py", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "expected every test to pass (or be skipped)" in err and "--allow-failing" in err
    # The failing test and the assertion that failed, not just a count.
    assert "test_window.py::test_example [failed]: AssertionError: assert [3, 3, 5, 5, 4] == [3, 3, 5, 5]" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["slowstats"], "no leftovers"

    assert main(["init", "--pytest", str(repo), "--target", "slowstats/window.py", "--out", str(out),
                 "--allow-failing", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert "test_window.py::test_example" in written["failing"] and "test_window.py::test_example" not in \
        written["tests"]
    assert "test_window.py::test_width_one_is_identity" in written["tests"]
    splits = tomllib.loads((out / "instances.toml").read_text(encoding="utf-8"))
    assert splits["train"] == written["tests"] and not set(splits["train"]) & set(written["failing"])
    seed = api.evaluate(out, run_dir=tmp_path / "run", backend="process", use_cache=False).results
    assert seed and all(r.ok for r in seed), [r.feedback for r in seed if not r.ok]


def test_tests_skipped_on_the_seed_are_left_out(repo: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    (repo / "tests" / "test_skip.py").write_text(
        "import pytest\n\n\n@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n\n\n"
        "def test_runs():\n    pass\n", encoding="utf-8")
    out = tmp_path / "task"
    assert main(["init", "--pytest", str(repo), "--target", "slowstats/window.py", "--out", str(out)]) == 0
    assert "left out 1 tests skipped on the repository's code" in capsys.readouterr().out
    splits = tomllib.loads((out / "instances.toml").read_text(encoding="utf-8"))
    assert "test_skip.py::test_runs" in splits["train"] and "test_skip.py::test_skipped" not in splits["train"]
    assert "val" not in splits and len(splits["train"]) == 12


def test_root_conftest_and_pytest_settings_reach_the_tests(repo: Path, tmp_path: Path) -> None:
    # As in many repositories: fixtures in a root conftest.py, settings in pyproject.toml.
    (repo / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef sample():\n    return [1, 3, 2, 5, 4]\n", encoding="utf-8")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "slowstats"\n\n[tool.pytest.ini_options]\npython_functions = ["test_*", "check_*"]\n'
        'addopts = "--no-such-option"\n', encoding="utf-8")
    (repo / "tests" / "test_fixture.py").write_text(
        "from slowstats.window import moving_max\n\n\ndef check_sample(sample):\n"
        "    assert moving_max(sample, 2) == [3, 3, 5, 5]\n", encoding="utf-8")
    result = init_pytest_task(repo, "slowstats/window.py", out=tmp_path / "task")
    assert "test_fixture.py::check_sample" in result.tests  # collected by the pyproject.toml setting
    assert set(result.support_files) == {"pyproject.toml", "conftest.py"}
    assert not (result.task_dir / "seed" / "conftest.py").exists(), "test support, not code of the seed"
    seed = api.evaluate(result.task_dir, run_dir=tmp_path / "run", backend="process", use_cache=False).results
    assert len(seed) == 12 and all(r.ok for r in seed), [r.feedback for r in seed if not r.ok]


def test_root_and_tests_conftest_both_load_tests_one_overriding(repo: Path, tmp_path: Path) -> None:
    (repo / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef width():\n    return 1\n\n\n"
        "@pytest.fixture\ndef sample():\n    return [1, 3, 2, 5, 4]\n", encoding="utf-8")
    (repo / "tests" / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef width():\n    return 2\n", encoding="utf-8")
    (repo / "tests" / "test_fixture.py").write_text(
        "from slowstats.window import moving_max\n\n\ndef test_sample(sample, width):\n"
        "    assert width == 2\n    assert moving_max(sample, width) == [3, 3, 5, 5]\n", encoding="utf-8")
    before = (repo / "tests" / "conftest.py").read_bytes()
    result = init_pytest_task(repo, "slowstats/window.py", out=tmp_path / "task")
    assert "test_fixture.py::test_sample" in result.tests
    assert result.support_files == ("conftest.py (as _evolver_root_conftest.py)",)
    assert (result.task_dir / "tests" / "_evolver_root_conftest.py").read_bytes() == (repo / "conftest.py").read_bytes()
    assert (result.task_dir / "tests" / "conftest.py").read_bytes().startswith(before)
    seed = api.evaluate(result.task_dir, run_dir=tmp_path / "run", backend="process", use_cache=False).results
    assert len(seed) == 12 and all(r.ok for r in seed), [r.feedback for r in seed if not r.ok]


def test_subpackages_are_copied_top_level_build_docs_hidden_folders_and_virtualenvs_not(repo: Path,
                                                                                        tmp_path: Path) -> None:
    (repo / "slowstats" / "build").mkdir()
    (repo / "slowstats" / "build" / "__init__.py").write_text("", encoding="utf-8")
    (repo / "slowstats" / "build" / "fast.py").write_text("def f():\n    return 1\n", encoding="utf-8")
    (repo / "build").mkdir()
    (repo / "build" / "old.py").write_text("X = 1\n", encoding="utf-8")
    (repo / "slowstats" / "myenv").mkdir()
    (repo / "slowstats" / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    (repo / "slowstats" / "myenv" / "lib.py").write_text("X = 1\n", encoding="utf-8")
    for folder, name in ((".github/workflows", "ci.yml"), (".idea", "workspace.xml"), ("docs", "index.rst"),
                         ("slowstats/docs", "notes.py")):
        (repo / folder).mkdir(parents=True)
        (repo / folder / name).write_text("x = 1\n", encoding="utf-8")
    result = init_pytest_task(repo, "slowstats/build/fast.py", out=tmp_path / "task")
    seed = result.task_dir / "seed"
    assert result.target == "slowstats/build/fast.py" and (seed / "slowstats" / "build" / "fast.py").is_file()
    assert load_task(result.task_dir).mutable == ("slowstats/build/fast.py",)
    assert not (seed / "build").exists() and not (seed / "slowstats" / "myenv").exists()
    # hidden tool folders and the documentation at the top level are never part of the seed
    assert not (seed / ".github").exists() and not (seed / ".idea").exists() and not (seed / "docs").exists()
    assert (seed / "slowstats" / "docs" / "notes.py").is_file()  # a subpackage named docs is code

    with pytest.raises(UserInputError, match=r"--target: expected build/old.py to be copied into the task's seed"):
        init_pytest_task(repo, "build/old.py", out=tmp_path / "task2")
    assert not (tmp_path / "task2").exists()


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


def test_a_failed_forced_init_keeps_the_previous_task(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "task"
    init_pytest_task(repo, "slowstats/window.py", out=out)
    toml = out / "task.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "# hand-edited\n", encoding="utf-8")
    before = _files(out)
    (repo / "tests" / "test_broken.py").write_text("import no_such_module_anywhere\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="expected pytest to collect the tests"):
        init_pytest_task(repo, "slowstats/window.py", out=out, force=True)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slowstats", "task"], "no half-built folders left"


def test_tests_that_do_not_collect_are_a_clear_error(repo: Path, tmp_path: Path) -> None:
    (repo / "tests" / "test_broken.py").write_text("import no_such_module_anywhere\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="expected pytest to collect the tests"):
        init_pytest_task(repo, "slowstats/window.py", out=tmp_path / "task")
    assert not (tmp_path / "task").exists()
