"""The trusted side of an evaluation: it never imports candidate code and computes every score itself.

Protocol: the request arrives as one JSON document on stdin (with a nonce the candidate never sees); the
results leave as one JSON document on the original stdout, which only this process holds. Everything the
judge prints goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from . import reporting
from .modules import load_file_module
from .spawn import ChildIdentity, ChildLimits, ChildRun, harden_self, kill_leftovers, run_child
from .tracebacks import MAX_FRAME_RECORDS, clip_frames, relabel

TYPE_CHECKING = False  # typing costs ~15 ms of start-up in every sandbox process
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


def _format_exc(limit: int, exc: BaseException | None = None) -> str:
    import traceback  # only failures pay for traceback's imports (~3 ms of every harness start)

    if exc is not None:
        return "".join(traceback.format_exception(exc, limit=limit))
    return traceback.format_exc(limit=limit)


class EvaluatorError(Exception):
    """The task's own evaluator (prepare/judge) failed: not the candidate's fault."""


def _load_evaluator(path: str):
    try:
        module = load_file_module(path)
    except ModuleNotFoundError as exc:
        raise EvaluatorError(
            f"{exc}; the trusted half never sees candidate files: import candidate modules inside produce(), "
            "not at the top of the evaluator") from exc
    if not callable(getattr(module, "produce", None)) or not callable(getattr(module, "judge", None)):
        raise EvaluatorError("the evaluator must define produce(inputs) and judge(instance, inputs, output, usage)")
    return module


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (math.inf, -math.inf):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def _child_json(text: str) -> Any:
    """Parse what the child wrote. child.py never writes NaN or Infinity (nor numbers that overflow to it): a
    document that has them is forged, and letting them through would make the harness's own strict result
    document fail for the whole batch. Nesting too deep for the parser is a ValueError here too."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_PROFILE_NUMBERS = ("ncalls", "primitive_calls", "tottime_s", "cumtime_s")


def _location(file: Any, line: Any, name: Any) -> bool:
    """A place in a candidate file as the child reports it: a short relative path that stays inside the
    candidate, a line number, a short name. The child writes its document itself, so it is checked here."""
    return (isinstance(file, str) and 0 < len(file) <= 300 and file.isprintable() and not file.startswith("/")
            and ".." not in file.split("/")
            and isinstance(line, int) and not isinstance(line, bool) and 0 <= line < 10_000_000
            and isinstance(name, str) and 0 < len(name) <= 200 and name.isprintable())


def _profile_rows(rows: Any) -> list[dict[str, Any]]:
    """The child's hot spots, kept only in the shape profiling.hot_spots makes: the child can write anything
    into its document, and the host renders these rows as they are. The display string is rebuilt from the
    checked parts, so it cannot say something else than they do."""
    if not isinstance(rows, list):
        return []
    kept = []
    for row in rows[:20]:
        if not isinstance(row, dict) or not _location(row.get("file"), row.get("line"), row.get("name")):
            continue
        numbers = {k: row.get(k) for k in _PROFILE_NUMBERS}
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values()):
            where = {"file": row["file"], "line": row["line"], "name": row["name"]}
            kept.append({"function": f"{where['file']}:{where['line']}({where['name']})", **where, **numbers})
    return kept


def _frame_rows(frames: Any) -> list[dict[str, Any]]:
    """The child's traceback frames, kept only in the shape tracebacks.candidate_frames makes (a bad frame is
    dropped, never the instance), at most MAX_FRAME_RECORDS of them."""
    if not isinstance(frames, list):
        return []
    kept = [{"file": f["file"], "line": f["line"], "function": f["function"]}
            for f in frames[: 2 * MAX_FRAME_RECORDS]
            if isinstance(f, dict) and _location(f.get("file"), f.get("line"), f.get("function"))]
    return clip_frames(kept)


def _usage(run: ChildRun) -> dict[str, float]:
    return {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb}


def _base(instance: str, run: ChildRun | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "instance": instance, "status": "ok", "score": 0.0, "objectives": {}, "feedback": "",
        "artifacts": {}, "profile": [], "frames": [], "usage": None, "stdout": "", "stderr": "",
        "exit_code": None, "signal": None,
    }
    if run is not None:
        rec.update(usage=_usage(run), stdout=run.stdout, stderr=run.stderr, exit_code=run.exit_code,
                   signal=run.signal)
    return rec


def _classify_failure(run: ChildRun, doc: dict | None, limits: ChildLimits) -> tuple[str, str]:
    """Status and feedback of a child that produced no usable output."""
    stderr_tail = run.stderr[-1500:].strip()
    if run.timed_out:
        return "timeout", f"Timed out: still running after {limits.timeout_s:g} s (wall clock); killed."
    if run.signal == 24:  # SIGXCPU: the CPU-time rlimit
        return "timeout", f"Exceeded the CPU-time limit ({math.ceil(limits.timeout_s) + 1} s); killed."
    if doc is not None and not doc.get("ok", False):
        kind = doc.get("kind", "error")
        detail = str(doc.get("traceback") or doc.get("error", ""))[:8000]  # the child's document: any JSON
        if kind == "memory":
            return "memory", f"Ran out of memory (limit {limits.memory_mb} MB):\n{detail}"
        if kind == "output_limit":
            return "output_limit", (
                f"Wrote more than the output limit ({limits.file_size_bytes // (1024 * 1024)} MB):\n{detail}")
        if kind == "not_json":
            return "error", str(doc.get("error", "produce returned a value that is not plain JSON"))
        if kind == "exit":
            return "error", f"The candidate called sys.exit() before producing a result:\n{detail}"
        return "error", detail or "produce failed"
    if "MemoryError" in run.stderr or "Cannot allocate memory" in run.stderr:
        return "memory", f"Ran out of memory (limit {limits.memory_mb} MB).\n{stderr_tail}"
    if run.signal is not None:
        return "crashed", f"Killed by signal {run.signal} before producing a result.\n{stderr_tail}"
    return "no_output", (
        f"Exited with code {run.exit_code} before producing a result (did the candidate exit early?).\n"
        f"{stderr_tail}")


def _verdict(instance: str, raw: Any) -> dict[str, Any]:
    """Normalise what judge returned (report(...) dict or a bare number)."""
    if isinstance(raw, bool) or raw is None:
        raise EvaluatorError(f"judge returned {raw!r}; expected report(...) or a number")
    if isinstance(raw, (int, float)):
        raw = {"score": float(raw), "objectives": {}, "feedback": "", "invalid": False, "nonfinite": []}
    if not isinstance(raw, dict) or "score" not in raw:
        raise EvaluatorError(f"judge returned {type(raw).__name__}; expected report(...) or a number")
    if raw.get("instance", instance) != instance:
        raise EvaluatorError(f"judge reported instance {raw.get('instance')!r} while judging {instance!r}")
    score = float(raw["score"])
    objectives = {k: float(v) for k, v in dict(raw.get("objectives") or {}).items()}
    nonfinite = [k for k, v in [("score", score), *objectives.items()] if not math.isfinite(v)]
    return {
        "score": score if math.isfinite(score) else 0.0,
        "objectives": {k: (v if math.isfinite(v) else None) for k, v in objectives.items()},
        "feedback": str(raw.get("feedback", "")),
        "invalid": bool(raw.get("invalid")) or bool(nonfinite),
        "nonfinite": nonfinite,
        "artifacts": raw.get("artifacts") or {},
    }


class Harness:
    def __init__(self, request: dict) -> None:
        self.req = request
        self.io_dir = os.path.join(request["sandbox_root"], "harness-io")
        os.makedirs(self.io_dir, mode=0o700, exist_ok=True)
        self.limits = ChildLimits(
            timeout_s=float(request["timeout_s"]),
            memory_mb=int(request["memory_mb"]),
            file_size_bytes=int(request["file_size_limit_bytes"]),
            max_processes=int(request["max_processes"]),
        )
        self.identity = ChildIdentity(request.get("child_uid"), request.get("child_gid"))
        self.roots = {request["candidate_dir"]: "candidate", request["task_dir"]: "task",
                      PACKAGE_DIR: "harness"}
        self.argv = [request["child_python"], "-I", "-S", "-B", os.path.join(PACKAGE_DIR, "run_child.py")]
        self.env = dict(request["child_env"])
        self.counter = 0

    def _job(self, mode: str, **extra: Any) -> dict:
        return {
            "mode": mode, "candidate_dir": self.req["candidate_dir"], "task_dir": self.req["task_dir"],
            "site_paths": self.req.get("site_paths", []), "profile": bool(self.req.get("profile")),
            "roots": self.roots, **extra,
        }

    def _child(self, job: dict, timeout_s: float | None = None, session=None) -> tuple[ChildRun, dict | None]:
        self.counter += 1
        limits = self.limits
        if timeout_s is not None:
            limits = ChildLimits(timeout_s, limits.memory_mb, limits.file_size_bytes, limits.max_processes)
        run = run_child(self.argv, job, self.io_dir, str(self.counter), limits, self.identity,
                        self.req["candidate_dir"], self.env, int(self.req.get("keep_output_bytes", 4096)),
                        session)
        try:
            doc = _child_json(run.result_text) if run.result_text.strip() else None
            if doc is not None and not isinstance(doc, dict):
                doc = None
        except ValueError:
            doc = None
        return run, doc

    # -- evaluator mode -------------------------------------------------------------------------------
    def run_evaluator(self) -> list[dict]:
        evaluator_path = os.path.join(self.req["task_dir"], self.req["evaluator"])
        # The trusted process sees the task's helpers, never the candidate's files.
        sys.path.insert(0, self.req["task_dir"])
        reporting._candidate_dir = self.req["candidate_dir"]
        evaluator = _load_evaluator(evaluator_path)
        results = []
        for instance in self.req["instances"]:
            results.append(self._one_instance(evaluator, evaluator_path, instance))
        return results

    def _evaluator_failure(self, instance: str, run: ChildRun | None, where: str,
                           exc: BaseException | None = None) -> dict:
        rec = _base(instance, run)
        rec["status"] = "evaluator_error"
        rec["feedback"] = relabel(f"The task's evaluator failed in {where} (not the candidate's fault):\n"
                                  + _format_exc(-8, exc), self.roots)
        return rec

    def _one_instance(self, evaluator, evaluator_path: str, instance: str) -> dict:
        try:
            prepare = getattr(evaluator, "prepare", None)
            inputs = prepare(instance) if callable(prepare) else {"instance": instance}
            inputs = json.loads(json.dumps(inputs, allow_nan=False))
        except Exception:  # noqa: BLE001
            return self._evaluator_failure(instance, None, "prepare")
        job = self._job("produce", evaluator_path=evaluator_path, inputs=inputs,
                        evaluator_label=f"task/{self.req['evaluator']}")
        serve = getattr(evaluator, "serve", None)
        if not callable(serve):
            run, doc = self._child(job)
            judge_kwargs = {}
        else:
            from .session import ServerError, Session  # only serving evaluators pay for the import

            try:
                server = serve(instance, inputs)
                session = Session(server)
            except Exception:  # noqa: BLE001
                return self._evaluator_failure(instance, None, "serve")
            try:
                job["channel"] = list(session.child_fds())
                run, doc = self._child(job, session=session)
            except ServerError as exc:
                return self._evaluator_failure(instance, None, "the session server's handle", exc.__cause__)
            finally:
                session.close()
            judge_kwargs = {"session": server}
            if run.session_fault and not run.timed_out and (run.session_killed or (doc or {}).get("ok")):
                rec = _base(instance, run)
                rec["status"], rec["feedback"] = "error", run.session_fault
                return rec
        rec = _base(instance, run)
        if doc is not None:
            rec["profile"] = _profile_rows(doc.get("profile"))
        if run.timed_out or doc is None or not doc.get("ok"):
            rec["status"], rec["feedback"] = _classify_failure(run, doc, self.limits)
            if doc is not None and not run.timed_out:  # where produce raised, when it did
                rec["frames"] = _frame_rows(doc.get("frames"))
            return rec
        try:
            output = _child_json(doc["output_json"])
        except (KeyError, TypeError, ValueError):
            rec["status"], rec["feedback"] = "error", "The candidate's process returned a malformed result."
            return rec
        try:
            verdict = _verdict(instance, evaluator.judge(instance, inputs, output, _usage(run), **judge_kwargs))
        except Exception:  # noqa: BLE001
            return self._evaluator_failure(instance, run, "judge")
        rec.update(score=verdict["score"], objectives=verdict["objectives"], feedback=verdict["feedback"],
                   artifacts=verdict["artifacts"])
        if verdict["invalid"]:
            rec["status"] = "invalid"
            rec["score"] = 0.0
            if verdict["nonfinite"]:
                rec["feedback"] += f"\n(non-finite values for: {', '.join(verdict['nonfinite'])})"
        return rec

    # -- pytest mode ----------------------------------------------------------------------------------
    def collect_tests(self) -> list[str]:
        run, doc = self._child(self._job("collect", tests_dir=self.req["tests_dir"]))
        if doc is None or not doc.get("ok"):
            _, feedback = _classify_failure(run, doc, self.limits)
            raise EvaluatorError(f"collecting the tests failed:\n{feedback}\n{run.stdout[-2000:]}")
        return list(doc.get("collected", []))

    def run_pytest(self) -> list[dict]:
        ids = list(self.req["instances"])
        timeout = self.limits.timeout_s * max(1, len(ids))
        run, doc = self._child(self._job("pytest", tests_dir=self.req["tests_dir"], test_ids=ids), timeout)
        tests = (doc or {}).get("tests") or {}
        results = []
        fail_status, fail_feedback = (None, "")
        if run.timed_out or doc is None or not doc.get("ok"):
            fail_status, fail_feedback = _classify_failure(run, doc, ChildLimits(
                timeout, self.limits.memory_mb, self.limits.file_size_bytes, self.limits.max_processes))
        for instance in ids:
            rec = _base(instance, run)
            rec["usage"] = None  # one process ran every test: per-test usage is not measurable from outside
            t = tests.get(instance)
            if t is None:
                rec["status"] = fail_status or "missing"
                rec["feedback"] = fail_feedback or (
                    "The test did not report a result (not collected, or the run ended before it).\n"
                    + run.stdout[-1500:])
            else:
                outcome = t.get("outcome")
                rec["status"] = {"passed": "ok", "failed": "failed", "skipped": "skipped"}.get(outcome, "error")
                rec["score"] = 1.0 if outcome == "passed" else 0.0
                duration = t.get("duration_s")  # the child's document: not trusted to hold a finite number
                ok_number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
                rec["objectives"] = {"duration_s": float(duration) if ok_number and math.isfinite(duration)
                                     else 0.0}
                message, tb = t.get("message", ""), t.get("traceback", "")
                # The traceback ends with the assertion message already; the message alone when there is none.
                feedback = tb if tb and message.splitlines()[:1] and message.splitlines()[0] in tb else (
                    "\n".join(p for p in (message, tb) if p))
                rec["stdout"], rec["stderr"] = t.get("stdout", ""), t.get("stderr", "")
                if outcome != "passed":
                    rec["frames"] = _frame_rows(t.get("frames"))
                    for name in ("stdout", "stderr"):
                        if rec[name].strip():
                            feedback += f"\n--- captured {name} ---\n{rec[name][-1500:]}"
                rec["feedback"] = feedback.strip()
            results.append(rec)
        if doc is not None and results:
            results[0]["profile"] = _profile_rows(doc.get("profile"))
        return results


def respond(request: dict) -> dict[str, Any]:
    """Run one request to its result document. Every failure of the task's code ends up in the document."""
    started = time.monotonic()
    doc: dict[str, Any] = {"version": PROTOCOL_VERSION, "nonce": request.get("nonce"), "results": [],
                           "error": None, "mode": request.get("mode")}
    try:
        if request.get("version") != PROTOCOL_VERSION:
            raise EvaluatorError(f"harness protocol {PROTOCOL_VERSION}, request says {request.get('version')}")
        harness = Harness(request)
        if request["mode"] == "python":
            doc["results"] = harness.run_evaluator()
            doc["trusted_scores"] = True
        elif request["mode"] == "pytest":
            doc["results"] = harness.run_pytest()
            doc["trusted_scores"] = False
        elif request["mode"] == "collect":
            doc["collected"] = harness.collect_tests()
        else:
            raise EvaluatorError(f"unknown mode {request['mode']!r}")
    except Exception as exc:  # noqa: BLE001 - reported to the host as a harness-level error
        roots = {request.get("candidate_dir", "/nonexistent"): "candidate",
                 request.get("task_dir", "/nonexistent"): "task"}
        doc["error"] = relabel(f"{type(exc).__name__}: {exc}\n" + _format_exc(-6), roots)
    finally:
        kill_leftovers()
    doc["harness_wall_s"] = round(time.monotonic() - started, 6)
    return doc


def main() -> None:
    result_fd = os.dup(1)  # non-inheritable: children never get the results channel
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    harden_self()
    doc = respond(json.loads(sys.stdin.buffer.read()))
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(doc, allow_nan=False))
