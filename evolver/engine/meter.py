"""What a run spends: evaluator calls (reserved before a batch, settled after it), USD and time, kept in `Usage`
and written to the store; and the budget checks on them.

The calls a batch needs are reserved in run.db before it starts and settled with the calls it made when it
returns: a process killed in between leaves them reserved, and the next start counts them as spent, so the
evaluator never runs more often than the budget allows. Calls are also held (in memory) for a child between the
check that its evaluation is affordable and that evaluation, so iterations in flight cannot all pass the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..evaluation import CandidateEvaluator, CandidateRef, InstanceResult
from ..store import Store
from .budget import Budget, StopReason, Usage, evals_exhausted


class Meter:
    def __init__(self, *, run: str, store: Store, evaluator: CandidateEvaluator, budget: Budget, usage: Usage,
                 usd_spent: Callable[[], float], lock: threading.RLock) -> None:
        self.run, self.store, self.evaluator, self.budget = run, store, evaluator, budget
        self.usage, self.usd_spent, self.lock = usage, usd_spent, lock  # the engine's lock: one for its state
        self.reserved = 0  # calls promised to batches in flight and held for children about to be evaluated
        self._clock = time.monotonic()

    def tick(self) -> None:
        """Bring time and USD up to date and write the counters to the store (call with the lock held)."""
        now = time.monotonic()
        self.usage = replace(self.usage, seconds=self.usage.seconds + (now - self._clock), usd=self.usd_spent())
        self._clock = now
        self.store.update_run(self.run, iteration=self.usage.iterations, evals_used=self.usage.evals,
                              usd_used=self.usage.usd, elapsed_s=self.usage.seconds)

    def time_left(self) -> float | None:
        """Seconds left in the run's time budget (None: it has none), counted like `usage.seconds`: what bounds
        every LLM call, so a hanging server cannot hold the run past its budget."""
        if self.budget.max_seconds is None:
            return None
        with self.lock:
            used = self.usage.seconds + (time.monotonic() - self._clock)
        return self.budget.max_seconds - used

    def short(self, needed: int) -> str | None:
        """Why `needed` more calls are not affordable now (counting what is promised), or None (lock held)."""
        return evals_exhausted(self.budget, self.usage, needed, self.reserved)

    def budget_stop(self, needed: int) -> StopReason:
        with self.lock:
            return StopReason("budget", self.short(needed) or (
                f"evaluator-call budget: {self.usage.evals} used of {self.budget.max_evals}"))

    def hold(self, needed: int) -> list[int] | StopReason:
        """Hold `needed` calls for a child to come, or say why the budget cannot."""
        with self.lock:
            why = self.short(needed)
            if why:
                return StopReason("budget", why)
            self.reserved += needed
        return [needed]

    def release(self, held: list[int]) -> None:
        """Give back calls held for a child (once: the holder may have released them already)."""
        with self.lock:
            self.reserved -= held[0]
            held[0] = 0

    def evaluate(self, ref: CandidateRef, ids: Sequence[str], split: str) -> list[InstanceResult] | None:
        """Results, or None when the budget does not allow the evaluator calls this needs."""
        with self.lock:
            missing = self.evaluator.missing(ref, ids)
            self.tick()
            if self.short(missing):
                return None
            if missing:
                self.store.reserve_evals(self.run, missing)
            self.reserved += missing
        made: int | None = None  # None: the batch raised (Ctrl-C, an engine failure); it may have run
        try:
            results = self.evaluator.evaluate(ref, [(i, split) for i in ids])
            made = sum(r.ran for r in results)
        finally:
            with self.lock:
                self.reserved -= missing
                if missing or made:
                    self.usage = replace(self.usage, evals=self.usage.evals + (missing if made is None else made))
                    self.store.settle_evals(self.run, missing, self.usage.evals)
                self.tick()
        return results
