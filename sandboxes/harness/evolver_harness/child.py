"""The untrusted side: runs the candidate's code and writes what it produced to the result descriptor.

Everything this process writes is data to the harness, never a verdict: scores are computed by the trusted
judge in another process. It reports how produce failed (exception, memory, output limit) only as side
information.
"""

from __future__ import annotations

import errno
import json
import os
import sys

from .modules import load_file_module

TYPE_CHECKING = False  # typing costs ~15 ms of start-up in every sandbox process
if TYPE_CHECKING:
    from typing import Any



def format_exception(*args, **kwargs) -> str:
    from .tracebacks import format_exception as fmt  # only failures pay for traceback's imports

    return fmt(*args, **kwargs)


def candidate_frames(exc: BaseException, candidate_dir: str) -> list:
    from .tracebacks import candidate_frames as frames

    return frames(exc, candidate_dir)


def _profiler():
    import cProfile  # only when asked: it and pstats cost start-up time in every child

    return cProfile.Profile()


def hot_spots(profiler, candidate_dir: str) -> list:
    from .profiling import hot_spots as table

    return table(profiler, candidate_dir)


def _failure(exc: BaseException, job: dict) -> dict:
    kind = "error"
    if isinstance(exc, MemoryError):
        kind = "memory"
    elif isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        kind = "output_limit"
    elif isinstance(exc, SystemExit):
        kind = "exit"
    return {
        "ok": False,
        "kind": kind,
        "error": f"{type(exc).__name__}: {exc}"[:2000],
        "traceback": format_exception(exc, job["candidate_dir"], job["roots"]),
        "frames": candidate_frames(exc, job["candidate_dir"]),
    }


def _run_produce(job: dict) -> dict:
    evaluator = load_file_module(job["evaluator_path"])
    produce = getattr(evaluator, "produce", None)
    if produce is None:
        raise AttributeError(f"{job['evaluator_label']} defines no produce(inputs) function")
    channel = None
    if job.get("channel"):  # the evaluator serves a session: produce(inputs, channel)
        from .session import Channel

        channel = Channel(*job["channel"])
    profiler = _profiler() if job.get("profile") else None
    if profiler is not None:
        profiler.enable()
    try:
        output = produce(job["inputs"]) if channel is None else produce(job["inputs"], channel)
    finally:
        if profiler is not None:
            profiler.disable()
        if channel is not None:
            channel.close()
    try:
        text = json.dumps(output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {"ok": False, "kind": "not_json", "error": f"produce returned a value that is not plain JSON: {exc}",
                "traceback": ""}
    doc: dict[str, Any] = {"ok": True, "output_json": text}
    if profiler is not None:
        doc["profile"] = hot_spots(profiler, job["candidate_dir"])
    return doc


class _PytestCollector:
    """pytest plugin: one record per test, with the assertion and the candidate's frames."""

    def __init__(self, job: dict) -> None:
        self.job = job
        self.records: dict[str, dict] = {}
        self.collected: list[str] = []

    def pytest_collection_finish(self, session) -> None:
        self.collected = [item.nodeid for item in session.items]

    def pytest_runtest_logreport(self, report) -> None:
        rec = self.records.setdefault(
            report.nodeid, {"outcome": "passed", "duration_s": 0.0, "message": "", "traceback": "",
                            "frames": [], "stdout": "", "stderr": ""}
        )
        rec["duration_s"] += float(getattr(report, "duration", 0.0) or 0.0)
        if report.failed:
            rec["outcome"] = "failed" if report.when == "call" else "error"
            crash = getattr(report.longrepr, "reprcrash", None)
            rec["message"] = (crash.message if crash is not None else str(report.longrepr))[:4000]
            excinfo = getattr(report, "_evolver_excinfo", None)
            if excinfo is not None:
                # Test frames show which call failed; candidate frames show where.
                rec["traceback"] = format_exception(excinfo, self.job["candidate_dir"], self.job["roots"],
                                                    also_keep=(self.job["tests_dir"],))
                rec["frames"] = candidate_frames(excinfo, self.job["candidate_dir"])
        elif report.skipped and rec["outcome"] == "passed":
            rec["outcome"] = "skipped"
            if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                rec["message"] = str(report.longrepr[2])[:2000]
        if report.when == "call" or report.failed:
            rec["stdout"] = (report.capstdout or "")[-4000:]
            rec["stderr"] = (report.capstderr or "")[-4000:]


def _run_pytest(job: dict, collect_only: bool) -> dict:
    import pytest  # only pytest mode needs it; evaluator mode stays stdlib-only

    tests_dir = job["tests_dir"]
    collector = _PytestCollector(job)

    class _ExcinfoBridge:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(self, item, call):
            outcome = yield
            rep = outcome.get_result()
            if call.excinfo is not None:
                rep._evolver_excinfo = call.excinfo.value

    args = ["-p", "no:cacheprovider", "-q", "--no-header", "-rN", f"--rootdir={tests_dir}",
            "-o", "addopts=", "-o", "console_output_style=classic"]
    ids = job.get("test_ids") or []
    args += [os.path.join(tests_dir, t) for t in ids] if ids else [tests_dir]
    if collect_only:
        args.append("--collect-only")
    profiler = _profiler() if job.get("profile") and not collect_only else None
    if profiler is not None:
        profiler.enable()
    try:
        exit_code = pytest.main(args, plugins=[collector, _ExcinfoBridge()])
    finally:
        if profiler is not None:
            profiler.disable()
    doc: dict[str, Any] = {"ok": True, "pytest_exit": int(exit_code), "collected": collector.collected}
    if not collect_only:
        doc["tests"] = collector.records
    if profiler is not None:
        doc["profile"] = hot_spots(profiler, job["candidate_dir"])
    return doc


def main(result_fd: int) -> None:
    job = json.load(sys.stdin)
    # The child's own view: candidate first so its modules win, then the task's helpers, then packages.
    sys.path[:0] = [job["candidate_dir"], job["task_dir"]]
    sys.path.extend(p for p in job.get("site_paths", []) if p not in sys.path)
    try:
        mode = job["mode"]
        doc = _run_produce(job) if mode == "produce" else _run_pytest(job, collect_only=mode == "collect")
    except BaseException as exc:  # noqa: BLE001 - every way the candidate fails is side information
        doc = _failure(exc, job)
    for stream in (sys.stdout, sys.stderr):
        try:  # not contextlib: its import costs start-up time in every sandbox process
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        with open(result_fd, "w", encoding="utf-8", closefd=True) as out:
            out.write(json.dumps(doc))
    except OSError:
        os._exit(3)
    os._exit(0)  # skip interpreter teardown: candidate atexit hooks and finalizers run no more code
