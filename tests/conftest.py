"""Shared fixtures of the sandbox tests: small task folders written from strings and evaluated for real.

`make_task` writes a task folder (task.toml, seed/sol.py, evaluate.py, instances.toml) into the test's
tmp_path; `run_eval` evaluates its seed through the process sandbox with the cache off and returns the
results by instance id. Instance ids are `i<N>`: the default evaluator hands N to `sol.f` and expects 2 * N,
so a candidate switches its behaviour on N (faulty for one id, correct for the others of the same batch).
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import pytest

from evolver.api import EvalReport, evaluate
from evolver.evaluation import InstanceResult

EVALUATE_TEMPLATE = '''
import json
from evolver_harness import report

def prepare(instance):
    return {{"x": int(instance[1:])}}

def produce(inputs):
    import sol
    return sol.f(inputs["x"])

def judge(instance, inputs, output, usage):
    ok = output == inputs["x"] * 2
    return report(instance, 1.0 if ok else 0.0, feedback="" if ok else {feedback}, {objectives})
'''


def evaluate_source(feedback: str = 'f"wrong: {output!r}"', objectives: str = 'runtime_s=usage["cpu_s"]') -> str:
    """The tests' evaluator: sol.f(N) must return 2 * N; `feedback` and `objectives` are the judge's
    expressions for a wrong output's feedback and for the reported objectives."""
    return EVALUATE_TEMPLATE.format(feedback=feedback, objectives=objectives)


DEFAULT_EVALUATE = evaluate_source()

GOOD_SOL = '''
def f(x):
    return x * 2
'''


def write_task(
    root: Path,
    *,
    sol: str = GOOD_SOL,
    evaluate_py: str = DEFAULT_EVALUATE,
    train: Iterable[str] = ("i1",),
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    output_limit_mb: int = 4,
    max_processes: int = 64,
    workers: int = 1,
    seed_files: dict[str, str] | None = None,
    mutable: Iterable[str] = ("sol.py",),
) -> Path:
    """Write a task folder at `root` and return it. workers=1 keeps every instance in one sandbox batch."""
    root.mkdir(parents=True, exist_ok=True)
    globs = ", ".join(f'"{g}"' for g in mutable)
    ids = ", ".join(f'"{i}"' for i in train)
    (root / "task.toml").write_text(textwrap.dedent(f"""\
        [task]
        mutable = [{globs}]

        [evaluate]
        timeout_s = {timeout_s}

        [sandbox]
        backend = "process"
        memory_mb = {memory_mb}
        output_limit_mb = {output_limit_mb}
        max_processes = {max_processes}
        workers = {workers}
        """))
    (root / "instances.toml").write_text(f"train = [{ids}]\n")
    (root / "evaluate.py").write_text(textwrap.dedent(evaluate_py))
    seed = root / "seed"
    seed.mkdir(exist_ok=True)
    (seed / "sol.py").write_text(textwrap.dedent(sol))
    for rel, text in (seed_files or {}).items():
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        (seed / rel).write_text(textwrap.dedent(text))
    return root


def sandbox_processes() -> list[psutil.Process]:
    """Live processes of the sandboxes this test process started: harnesses, children and whatever they left.

    They are told by their working directory, which starts in a sandbox dir named after the evolver process
    (`evolver-sbx-<pid>-...`) and still reads so once that dir is removed: other evolver processes on the
    machine (another test run, say) have sandboxes of their own that are none of this test's business."""
    mine = f"evolver-sbx-{os.getpid()}-"
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            cwd = p.cwd()
        except psutil.Error:
            continue
        if mine in cwd:
            found.append(p)
    return found


@pytest.fixture
def leftovers() -> Callable[..., list[psutil.Process]]:
    """`sandbox_processes` as a fixture, for tests that look for survivors themselves."""
    return sandbox_processes


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(**kwargs) -> Path:
        return write_task(tmp_path / f"task{next(counter)}", **kwargs)

    return make


@pytest.fixture
def run_eval(tmp_path: Path) -> Callable[..., dict[str, InstanceResult]]:
    """Evaluate a task's seed for real (process sandbox, no cache); results by instance id.

    The last report is kept as `run_eval.last` for tests that need more than the results."""

    def run(task_dir: Path, instances: list[str] | None = None, run_dir: Path | None = None) -> dict:
        rep: EvalReport = evaluate(task_dir, run_dir=run_dir or tmp_path / "run", use_cache=False,
                                   instances=instances)
        run.last = rep  # type: ignore[attr-defined]
        return {r.instance: r for r in rep.results}

    return run


@pytest.fixture
def assert_clean_next(run_eval) -> Callable[..., None]:
    """After a fault: no sandbox process is left and the next evaluation of good instances is clean."""

    def check(task_dir: Path, good: Iterable[str]) -> None:
        deadline = time.monotonic() + 5
        while (left := sandbox_processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"sandbox processes left behind: {[(p.pid, p.info['cmdline']) for p in left]}"
        good = list(good)
        results = run_eval(task_dir, instances=good)
        for i in good:
            assert results[i].status == "ok", (i, results[i].status, results[i].feedback)
            assert results[i].score == 1.0, (i, results[i].feedback)
        assert not sandbox_processes()

    return check


def pytest_terminal_summary(terminalreporter) -> None:
    """Say it out loud when the docker backend was not tested."""
    if os.environ.get("EVOLVER_DOCKER") == "0":
        terminalreporter.write_line("EVOLVER_DOCKER=0: the docker sandbox tests were skipped on request", yellow=True)
