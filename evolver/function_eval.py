"""Evaluation by a plain Python function, for `evolver.optimize(seed=..., evaluator=fn)` (GEPA's
optimize_anything style): `fn(candidate, example) -> score` or `(score, side_info)`, or `fn(candidate)` for
single-task search (one problem, no dataset).

The function runs in evolver's own process: meant for candidates that are text (prompts, configurations,
instructions) whose evaluation the user controls. A candidate that is code to be run belongs in a task folder,
whose evaluator runs candidate code only inside a sandbox.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import resource
import tarfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .evaluation import CandidateRef, InstanceResult
from .store import EvaluationRow, Store

EvaluatorFn = Callable[[Any, Any], Any]


def _files(archive: bytes) -> dict[str, str]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            if f is not None:
                out[m.name] = f.read().decode("utf-8", errors="replace")
    return out


def side_info_text(info: Any) -> str:
    """Side information as text: a string as it is, a mapping as `key: value` lines, anything else as JSON."""
    if info is None:
        return ""
    if isinstance(info, str):
        return info
    if isinstance(info, Mapping):
        return "\n".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in info.items())
    return json.dumps(info, default=str)


def function_key(fn: EvaluatorFn, digest: str) -> str:
    """Results are reused only for the same task data and the same function code."""
    code = getattr(fn, "__code__", None)
    ident = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
    body = code.co_code + repr(code.co_consts).encode() if code is not None else b""
    return hashlib.sha256(f"function|{digest}|{ident}|".encode() + body).hexdigest()


class FunctionEvaluator:
    def __init__(self, fn: Callable[..., Any], examples: Mapping[str, Any], store: Store, digest: str,
                 single_file: str | None, *, with_example: bool = True) -> None:
        self.fn, self.examples, self.store, self.single_file = fn, examples, store, single_file
        self.with_example = with_example  # False: single-task search, fn(candidate) scores the one problem
        self.cache_key = function_key(fn, digest)

    def missing(self, candidate: CandidateRef, instances: Sequence[str]) -> int:
        cached = self.store.cached(self.cache_key, candidate.tree, instances)
        return sum(1 for i in instances if (i, 0) not in cached)

    def close(self) -> None:
        pass

    def _one(self, candidate: Any, instance: str, split: str | None) -> EvaluationRow:
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        status, objectives, feedback = "ok", {}, ""
        try:
            out = self.fn(candidate, self.examples[instance]) if self.with_example else self.fn(candidate)
            score, info = (out if isinstance(out, tuple) and len(out) == 2 else (out, None))
            score = float(score)
            if isinstance(info, Mapping) and isinstance(info.get("objectives"), Mapping):
                objectives = {k: float(v) for k, v in info["objectives"].items()}
            feedback = side_info_text(info)
            if not math.isfinite(score):
                status, score, feedback = "invalid", 0.0, f"non-finite score\n{feedback}"
        except Exception as exc:  # noqa: BLE001 - the evaluator's failure is this instance's side information
            # Its traceback runs through the user's function, not through candidate files: no frames.
            status, score = "error", 0.0
            feedback = "".join(traceback.format_exception(exc, limit=-6))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        usage = {"wall_s": round(time.perf_counter() - t0, 6),
                 "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 6),
                 "peak_rss_mb": round(cpu1.ru_maxrss / 1024, 3)}
        return EvaluationRow(instance=instance, repeat=0, split=split, status=status, score=score,
                             objectives=objectives, feedback=feedback, profile=[], usage=usage, stdout="", stderr="",
                             backend="function", trusted=True)

    def evaluate(self, candidate: CandidateRef, instances: Sequence[tuple[str, str | None]], *,
                 use_cache: bool = True, on_progress: Callable[[int, int], None] | None = None
                 ) -> list[InstanceResult]:
        ids = [i for i, _ in instances]
        cached = self.store.cached(self.cache_key, candidate.tree, ids) if use_cache else {}
        todo = [(i, s) for i, s in instances if (i, 0) not in cached]
        rows: dict[str, EvaluationRow] = {i: r for (i, _), r in cached.items()}
        if todo:
            files = _files(candidate.archive())
            payload: Any = files.get(self.single_file, "") if self.single_file else files
            new = [self._one(payload, i, s) for i, s in todo]
            self.store.save_evaluations(self.cache_key, candidate.tree, new)
            rows.update({r.instance: r for r in new})
        out = []
        for i, s in instances:
            r = rows[i]
            out.append(InstanceResult(instance=i, split=s, status=r.status, score=r.score, objectives=r.objectives,
                                      feedback=r.feedback, usage=r.usage, cached=(i, 0) in cached,
                                      backend="function", frames=(), ran=0 if (i, 0) in cached else 1))
        return out
