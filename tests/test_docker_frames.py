"""Traceback frames and profile rows are the same records from the docker pool as from the process sandbox
(the candidate sits at another absolute path there, and pytest children fork from a pre-imported server).
Runs whenever test_docker_sandbox.py runs: it shares that module's engine, image and pool fixtures."""

# ruff: noqa: F811 - pytest fixtures are imported from the docker tests' module by name
from __future__ import annotations

from dataclasses import replace

from test_docker_sandbox import client, image, make_job, pool, results_of  # noqa: F401

from evolver.sandbox import ProcessSandbox, SandboxJob

SOL = '''
def inner(x):
    if x == 7:
        raise ValueError("seven")
    return x


def f(x):
    return inner(x) * 2
'''
RAISES = {"file": "sol.py", "line": 4, "function": "inner"}
CALLS = {"file": "sol.py", "line": 9, "function": "f"}


def places(rows: list[dict]) -> set[tuple]:
    return {(r["file"], r["line"], r["name"], r["function"]) for r in rows}


def test_evaluator_mode_frames_and_profile_rows_match_the_process_backend(pool, tmp_path) -> None:
    job = replace(make_job(tmp_path, SOL, instances=("i1", "i7", "i2")), profile=True)
    docker_res, process_res = results_of(pool.run(job)), results_of(ProcessSandbox().run(job))
    assert docker_res["i7"]["frames"] == process_res["i7"]["frames"] == [CALLS, RAISES]
    assert docker_res["i1"]["frames"] == process_res["i1"]["frames"] == []
    assert places(docker_res["i1"]["profile"]) == places(process_res["i1"]["profile"]) == {
        ("sol.py", 1, "<module>", "sol.py:1(<module>)"),  # produce imports sol while profiled
        ("sol.py", 2, "inner", "sol.py:2(inner)"), ("sol.py", 8, "f", "sol.py:8(f)")}


def test_pytest_mode_frames_match_the_process_backend(pool, tmp_path) -> None:
    task = tmp_path / "pytest-task"
    (task / "tests").mkdir(parents=True)
    (task / "tests" / "test_sol.py").write_text(
        "import sol\n\ndef test_good():\n    assert sol.f(1) == 2\n\ndef test_raises():\n    assert sol.f(7) == 14\n")
    base = make_job(tmp_path, SOL)
    job = SandboxJob(mode="pytest", archive=base.archive, task_root=task,
                     task_files=(task / "tests" / "test_sol.py",),
                     instances=("test_sol.py::test_good", "test_sol.py::test_raises"), limits=base.limits)
    docker_res, process_res = results_of(pool.run(job)), results_of(ProcessSandbox().run(job))
    bad = "test_sol.py::test_raises"
    assert docker_res[bad]["status"] == process_res[bad]["status"] == "failed"
    assert docker_res[bad]["frames"] == process_res[bad]["frames"] == [CALLS, RAISES]
    good = "test_sol.py::test_good"
    assert docker_res[good]["frames"] == process_res[good]["frames"] == []
