"""Evaluate a candidate on instances through a sandbox, with the store as a cache keyed by git tree.

Instances not yet evaluated for this (task digest, tree) are split into batches and run on parallel
sandbox workers; each finished batch is saved at once, so Ctrl-C or a crash loses at most the batches in
flight. Failures of the sandbox itself (not the candidate) are reported but never cached.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol

from .config import UNCACHED_STATUSES
from .sandbox.base import Sandbox, SandboxJob, SandboxLimits, SandboxRun, harness_package_dir
from .store import EvaluationRow, Store
from .task import SPLITS, Task, digest_files

MAX_BATCH = 8


@dataclass(frozen=True)
class InstanceResult:
    instance: str
    split: str | None
    status: str
    score: float
    objectives: dict[str, float | None]
    feedback: str
    profile: tuple[dict[str, Any], ...] = ()
    usage: dict[str, float] | None = None
    stdout: str = ""
    stderr: str = ""
    cached: bool = False
    trusted: bool = True
    backend: str = ""
    repeats: int = 1
    # Where the failure was raised: candidate-file frames {"file", "line", "function"}, innermost last.
    frames: tuple[dict[str, Any], ...] = ()
    ran: int = 0  # repeats this evaluation ran (the others came from the store): the evaluator calls it made

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance, "split": self.split, "status": self.status, "score": self.score,
            "objectives": self.objectives, "feedback": self.feedback, "profile": list(self.profile),
            "usage": self.usage, "stdout": self.stdout, "stderr": self.stderr, "cached": self.cached,
            "trusted_scores": self.trusted, "backend": self.backend, "repeats": self.repeats,
            "frames": list(self.frames),
        }


@dataclass(frozen=True)
class CandidateRef:
    """What the evaluator needs of a candidate: its tree (cache key) and a way to get its files."""

    sha: str
    tree: str
    archive: Callable[[], bytes] = field(compare=False, repr=False)


def limits_for(task: Task) -> SandboxLimits:
    s = task.sandbox
    return SandboxLimits(timeout_s=task.timeout_s, memory_mb=s.memory_mb, cpus=s.cpus,
                         max_processes=s.max_processes, output_limit_mb=s.output_limit_mb)


def default_workers(task: Task) -> int:
    if task.sandbox.workers > 0:
        return task.sandbox.workers
    return max(1, min(4, os.cpu_count() or 1))


def _frames(value: Any) -> list[dict[str, Any]]:
    """The harness validated the frames already; only their shape is checked here, so that what the store
    keeps and the proposers read is always {"file": str, "line": int, "function": str}."""
    if not isinstance(value, list):
        return []
    return [{"file": f["file"], "line": f["line"], "function": f["function"]} for f in value
            if isinstance(f, dict) and isinstance(f.get("file"), str) and isinstance(f.get("function"), str)
            and isinstance(f.get("line"), int) and not isinstance(f.get("line"), bool)]


def _row_from_payload(
    rec: dict[str, Any], split: str | None, repeat: int, backend: str, trusted: bool
) -> EvaluationRow:
    return EvaluationRow(
        instance=str(rec["instance"]), repeat=repeat, split=split, status=str(rec.get("status", "error")),
        score=float(rec.get("score") or 0.0), objectives=dict(rec.get("objectives") or {}),
        feedback=str(rec.get("feedback", "")), profile=list(rec.get("profile") or []), usage=rec.get("usage"),
        stdout=str(rec.get("stdout", "")), stderr=str(rec.get("stderr", "")), backend=backend, trusted=trusted,
        frames=_frames(rec.get("frames")))


def _sandbox_failure_rows(run: SandboxRun, batch: Sequence[tuple[str, str | None, int]]) -> list[EvaluationRow]:
    harness_error = (run.payload or {}).get("error") if run.error is None else None
    if harness_error:
        status = "evaluator_error"
        feedback = f"The task's evaluator failed (not the candidate's fault): {harness_error}"
    else:
        detail = f"{run.error or 'the sandbox failed'}\n{run.stderr_tail[-1500:]}".strip()
        status, feedback = "sandbox_error", f"The sandbox failed (not the candidate's fault): {detail}"
    return [EvaluationRow(instance=i, repeat=r, split=s, status=status, score=0.0, objectives={},
                          feedback=feedback, profile=[],
                          usage=None, stdout="", stderr="", backend=run.backend, trusted=True)
            for i, s, r in batch]


def aggregate(rows: Sequence[EvaluationRow], cached: bool, ran: int = 0) -> InstanceResult:
    """Fold the repeats of one instance: median score and objectives; the first failure wins the status."""
    first = rows[0]
    failing = next((r for r in rows if r.status != "ok"), None)
    shown = failing or first
    names = {k for r in rows for k in r.objectives}
    objectives: dict[str, float | None] = {}
    for k in sorted(names):
        vals = [r.objectives[k] for r in rows if r.objectives.get(k) is not None]
        objectives[k] = statistics.median(vals) if vals else None  # type: ignore[type-var]
    return InstanceResult(
        instance=first.instance, split=first.split, status=shown.status,
        score=statistics.median(r.score for r in rows), objectives=objectives, feedback=shown.feedback,
        profile=tuple(shown.profile), usage=shown.usage, stdout=shown.stdout, stderr=shown.stderr,
        cached=cached, trusted=all(r.trusted for r in rows), backend=shown.backend, repeats=len(rows),
        frames=tuple(shown.frames), ran=ran)


@lru_cache(maxsize=1)
def harness_digest() -> str:
    """Changes whenever the harness code changes, so stored results of an older harness are not reused."""
    root = harness_package_dir()
    return digest_files(root, sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts))


def cache_key(task: Task) -> str:
    """The key evaluations are stored under: this evaluator (task files, settings) run by this harness."""
    return hashlib.sha256(f"{task.digest}|{harness_digest()}".encode()).hexdigest()


class CandidateEvaluator(Protocol):
    """What the loop needs of an evaluator: the sandbox one below, or a Python function (function_eval.py)."""

    cache_key: str  # what its results are stored under: another evaluator, other results

    def missing(self, candidate: CandidateRef, instances: Sequence[str]) -> int: ...

    def evaluate(self, candidate: CandidateRef, instances: Sequence[tuple[str, str | None]], *,
                 use_cache: bool = True, on_progress: Callable[[int, int], None] | None = None
                 ) -> list[InstanceResult]: ...

    def close(self) -> None: ...


class Evaluator:
    def __init__(self, task: Task, sandbox: Sandbox, store: Store, workers: int | None = None) -> None:
        self.task, self.sandbox, self.store = task, sandbox, store
        self.workers = workers or default_workers(task)
        self.limits = limits_for(task)
        # Walked once: every batch of every candidate ships the same task files.
        self.task_files = tuple(task.task_files())
        self.private_files = frozenset(task.private_files())
        self.cache_key = cache_key(task)

    def _job(self, archive: bytes, instances: tuple[str, ...], mode: str | None = None) -> SandboxJob:
        return SandboxJob(
            mode=mode or self.task.harness_mode, archive=archive, task_root=self.task.root,
            task_files=self.task_files, instances=instances, evaluator=self.task.evaluator,
            tests=self.task.tests, profile=self.task.profile, limits=self.limits,
            private_files=self.private_files)

    def close(self) -> None:
        self.sandbox.close()

    def collect_tests(self, candidate: CandidateRef) -> list[str]:
        """pytest tasks without an instances file: the test ids, collected in the sandbox."""
        run = self.sandbox.run(self._job(candidate.archive(), (), mode="collect"))
        if not run.ok or (run.payload or {}).get("error"):
            from .errors import EvolverError

            reason = run.error or (run.payload or {}).get("error")
            raise EvolverError(f"collecting the task's tests failed: {reason}")
        return list((run.payload or {}).get("collected", []))

    def missing(self, candidate: CandidateRef, instances: Sequence[str]) -> int:
        """Evaluator calls that evaluating `instances` would cost now (stored results are free)."""
        cached = self.store.cached(self.cache_key, candidate.tree, instances)
        return sum(1 for i in instances for r in range(self.task.repeats) if (i, r) not in cached)

    def evaluate(self, candidate: CandidateRef, instances: Sequence[tuple[str, str | None]], *,
                 use_cache: bool = True, on_progress: Callable[[int, int], None] | None = None
                 ) -> list[InstanceResult]:
        """Results for (instance, split) pairs, in the order given."""
        ids = [i for i, _ in instances]
        split_of = dict(instances)
        repeats = self.task.repeats
        cached = self.store.cached(self.cache_key, candidate.tree, ids) if use_cache else {}
        todo = [(i, split_of[i], r) for i in ids for r in range(repeats) if (i, r) not in cached]
        done_rows: dict[tuple[str, int], EvaluationRow] = dict(cached)
        total, finished = len(ids) * repeats, len(ids) * repeats - len(todo)
        if on_progress:
            on_progress(finished, total)
        if todo:
            archive = candidate.archive()
            size = max(1, min(MAX_BATCH, -(-len(todo) // self.workers)))
            batches = [todo[k : k + size] for k in range(0, len(todo), size)]
            trusted = self.task.trusted_scores
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="evolver-eval") as pool:
                futures: dict[Future, list] = {}
                for b in batches:
                    futures[pool.submit(self.sandbox.run, self._job(archive, tuple(i for i, _, _ in b)))] = b
                pending = set(futures)
                try:
                    while pending:
                        ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in ready:
                            rows = self._rows(fut.result(), futures[fut], trusted)
                            self.store.save_evaluations(
                                self.cache_key, candidate.tree,
                                [r for r in rows if r.status not in UNCACHED_STATUSES])
                            done_rows.update({(r.instance, r.repeat): r for r in rows})
                            finished += len(rows)
                            if on_progress:
                                on_progress(finished, total)
                except BaseException:
                    # Ctrl-C or an error: stop the batches in flight instead of waiting for them; the
                    # batches already saved stay saved.
                    for fut in pending:
                        fut.cancel()
                    self.sandbox.close()
                    raise
        results = []
        for i in ids:
            rows = [done_rows[(i, r)] for r in range(repeats) if (i, r) in done_rows]
            rows = [r if r.split == split_of[i] else _with_split(r, split_of[i]) for r in rows]
            results.append(aggregate(rows, cached=all((i, r) in cached for r in range(repeats)),
                                     ran=sum((i, r) not in cached for r in range(repeats))))
        return results

    def _rows(self, run: SandboxRun, batch: list[tuple[str, str | None, int]], trusted: bool) -> list[EvaluationRow]:
        if not run.ok or (run.payload or {}).get("error"):
            return _sandbox_failure_rows(run, batch)
        # A batch may hold several repeats of one instance: each result is one run, taken in order (keyed by id
        # alone, every repeat would get the same record and the median over repeats would be the last run).
        by_id: dict[str, list[dict[str, Any]]] = {}
        for r in (run.payload or {}).get("results", []):
            by_id.setdefault(str(r.get("instance")), []).append(r)
        rows = []
        for instance, split, repeat in batch:
            rec = by_id[instance].pop(0) if by_id.get(instance) else None
            if rec is None:
                rows.extend(_sandbox_failure_rows(run, [(instance, split, repeat)]))
                continue
            rows.append(_row_from_payload(rec, split, repeat, run.backend, trusted))
        return rows


def _with_split(row: EvaluationRow, split: str | None) -> EvaluationRow:
    return replace(row, split=split)


def instances_for(task: Task, split: str, collected: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(instance, split) pairs of one split or of all ('all'), without duplicates."""
    if task.instances is None:
        ids = list(collected or [])
        return [(i, "train") for i in ids] if split in ("all", "train", "val", "test") else []
    names = SPLITS if split == "all" else (split,)
    seen: set[str] = set()
    out = []
    for s in names:
        for i in task.instances.split(s):
            if i not in seen:
                seen.add(i)
                out.append((i, s))
    return out
