"""What became of a proposal, recorded in one place: its row, its lesson, the streaks and patience, the merge
schedule, and the live view's line. Every outcome goes through here, so none misses its lesson or its count."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..evaluation import InstanceResult
from ..evidence import condense
from ..lessons import LessonLog
from ..run_state import Standings
from ..store import ProposalRow, Store
from .context import ContextBuilder
from .meter import Meter
from .plans import MergePlanner, Plan
from .streaks import Streaks


class Outcomes:
    def __init__(self, *, store: Store, lessons: LessonLog, contexts: ContextBuilder, standings: Standings,
                 meter: Meter, streaks: Streaks, planner: MergePlanner | None, lock: threading.RLock,
                 emit: Callable[[str, str], None], label: Callable[[str], str]) -> None:
        self.store, self.lessons, self.contexts, self.standings = store, lessons, contexts, standings
        self.meter, self.streaks, self.planner, self.lock, self.emit, self.label = (
            meter, streaks, planner, lock, emit, label)

    def _row(self, pid: int) -> ProposalRow:
        row = self.store.proposal(pid)
        assert row is not None
        return row

    def reject(self, p: ProposalRow, plan: Plan, reason: str, detail: str, child_sum: float) -> None:
        assert p.child_sha is not None and plan.baseline is not None
        self.store.update_proposal(p.id, status="rejected", reason=reason, detail=detail, child_score=child_sum)
        self.lesson(p, "rejected", reason, child_sum - plan.baseline)
        with self.lock:
            self.count(plan, reason)
        self.emit("iteration", f"{self.label(p.child_sha)} {'merge ' if plan.is_merge else ''}rejected "
                               f"({reason}): {detail.splitlines()[0][:100]}")

    def not_judged(self, p: ProposalRow, results: Sequence[InstanceResult]) -> None:
        """The sandbox failed on the child (not the child's fault, never cached): no verdict on it now; the
        outcome `sandbox_error` is judged again by the next start, like `budget`."""
        detail = condense([r for r in results if r.status == "sandbox_error"], budget=1500)
        self.store.update_proposal(p.id, status="failed", reason="sandbox_error", detail=detail)
        self.lesson(self._row(p.id), "failed", "sandbox_error", None)

    def out_of_budget(self, p: ProposalRow, detail: str, child_score: float | None = None) -> None:
        """A committed child the budget cannot judge: its outcome is `budget` (with its lesson), and `resume` with
        a larger budget judges it then."""
        again = p.status == "failed" and p.reason == "budget"  # judged again on resume, still out of budget
        self.store.update_proposal(p.id, status="failed", reason="budget", detail=detail, child_score=child_score)
        if not again:
            self.lesson(self._row(p.id), "failed", "budget", None)

    def accept(self, p: ProposalRow, plan: Plan, val_results: Sequence[InstanceResult], child_sum: float,
               versus: str) -> None:
        """A child validated in full joins the standings (call with the engine's lock held)."""
        assert p.child_sha is not None and plan.baseline is not None
        before = self.standings.best_objectives()
        self.standings.add(p.child_sha, val_results, p.id)
        val_score = self.standings.mean_score(p.child_sha)
        self.store.update_proposal(p.id, status="accepted", reason="accepted", child_score=child_sum,
                                   val_score=val_score, detail=versus)
        self.lesson(p, "accepted", "accepted", child_sum - plan.baseline)
        improved = self.standings.improves_on(p.child_sha, before)
        usage = self.meter.usage
        self.meter.usage = replace(usage, best_score=max(val_score, usage.best_score or float("-inf")),
                                   since_improvement=0 if improved else usage.since_improvement + 1)
        self.streaks.accepted()
        if self.planner is not None:
            self.planner.accepted(plan)  # each accepted mutation schedules one merge attempt
        self.emit("iteration", f"c{p.id} accepted: {versus}, val {val_score:.4g}")

    def failed(self, p: ProposalRow, plan: Plan, failure: str, detail: str) -> None:
        self.lesson(p, "failed", failure, None)
        with self.lock:
            if failure == "llm_error":
                self.streaks.llm_failed(detail, plan.is_merge)
            if plan.is_merge and failure == "llm_error" and self.planner is not None:
                # An LLM outage says nothing about the pair: it stays eligible and the attempt is not counted,
                # but the failure counts towards the streak that stops a run whose LLM keeps failing.
                self.planner.release(plan)
            else:
                self.count(plan, failure)
        what = "merge" if plan.is_merge else "proposal"
        self.emit("iteration", f"{what} {p.id} failed ({failure}): {detail.splitlines()[0][:100] if detail else ''}")

    def count(self, plan: Plan, reason: str) -> None:
        """Streaks and patience after an outcome that was not an acceptance (called under the lock)."""
        self.meter.usage = replace(self.meter.usage, since_improvement=self.meter.usage.since_improvement + 1)
        warning = self.streaks.outcome(reason, plan.is_merge)  # patience counts a merge, the warning does not
        if warning:
            self.emit("warning", warning)

    def lesson(self, p: ProposalRow, outcome: str, reason: str, delta: float | None) -> None:
        self.lessons.append(self.contexts.lesson(p, outcome, reason, delta))
