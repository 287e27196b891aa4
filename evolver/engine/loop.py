"""The reflective evolution loop: select -> evidence -> propose -> commit -> evaluate -> accept.

Every step is written to the store (and the child to git) as it happens, so a kill -9 loses at most the
step in flight and `resume` continues: a committed child whose verdict was not recorded is evaluated again
from the cache. Randomness is derived from (seed, iteration), so a resumed run makes the same choices.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import EvolverError
from ..evaluation import CandidateEvaluator, CandidateRef, InstanceResult, instances_for
from ..evidence import condense
from ..lessons import Lesson, LessonLog, relevant
from ..proposers.base import Proposal, ProposalContext, Proposer
from ..proposers.merge import Merger
from ..repo import RunRepo, candidate_branch
from ..store import ProposalRow, Store
from ..task import Task
from .budget import FAILING_STREAK_WARNING, Budget, Usage, evals_exhausted, stop_reason
from .frontier import (
    FAILED_STATUSES,
    CandidateScores,
    Frontier,
    build_frontier,
    rank_key,
    scores_from_results,
)
from .merge_step import NO_MERGE, MergeSteps

# The LLM is down or misconfigured: more iterations would only repeat the same error.
LLM_ERROR_STREAK_STOP = 3


@dataclass(frozen=True)
class LoopConfig:
    minibatch: int = 3
    accept: str = "strict"  # strict: child sum > parent sum; ties: >=
    frontier: str = "instance"
    seed: int = 0
    workers: int = 1  # iterations in flight at once (proposals and their evaluations)
    tried_shown: int = 8
    merge: bool = True  # merge two frontier candidates now and then (GEPA's schedule)
    max_merges: int = 5  # merge attempts over the run
    merge_subsample: int = 5  # validation instances a merged candidate is first judged on

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Event:
    """What the live view shows after each step."""

    kind: str  # iteration | warning | stopped
    iteration: int
    message: str
    usage: Usage
    frontier_size: int = 0
    best: dict[str, float | None] | None = None


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


class Engine(MergeSteps):
    def __init__(self, *, task: Task, run: str, repo: RunRepo, store: Store, evaluator: CandidateEvaluator,
                 proposer: Proposer, lessons: LessonLog, budget: Budget, config: LoopConfig,
                 on_event: Callable[[Event], None] | None = None, usd_spent: Callable[[], float] = lambda: 0.0,
                 merger: Merger | None = None):
        self.task, self.run_name, self.repo, self.store = task, run, repo, store
        self.evaluator, self.proposer, self.lessons, self.merger = evaluator, proposer, lessons, merger
        self.budget, self.config, self.on_event, self.usd_spent = budget, config, on_event, usd_spent
        if task.instances is None:
            raise ValueError("an evolution run needs an instances file with train and val splits")
        self.train = list(task.instances.train)
        self.val = [i for i, _ in instances_for(task, "val")]
        if not self.train or not self.val:
            raise ValueError("an evolution run needs train and val instances")
        row = store.run(run)
        assert row is not None, "create the run in the store first"
        self.usage = Usage(evals=row.evals_used, usd=row.usd_used, seconds=row.elapsed_s, iterations=row.iteration)
        self.val_scores: dict[str, CandidateScores] = {}  # accepted candidates (sha) -> validation results
        self._frontier: Frontier | None = None
        self._trees: dict[str, str] = {}  # commit sha -> tree sha (commits never change)
        # Trees of every candidate of the run -> its branch: a proposal recreating one is a duplicate.
        self._known: dict[str, str] = {c.tree: c.branch or c.sha[:12] for c in store.candidates(run)}
        self.failing_streak = 0
        self.llm_error_streak = 0  # LLM calls that failed after all retries, in a row
        self._clock = time.monotonic()
        # Guards the engine's state (usage, frontier, known trees) when several iterations run at once; LLM
        # calls and evaluations run outside it. The store and the repo are safe to use concurrently.
        self._lock = threading.RLock()
        self._reserved = 0  # evaluator calls promised to batches in flight, so parallel batches never overshoot
        self._stopping: str | None = None
        self._error: BaseException | None = None
        self._init_merges()

    # -- helpers -----------------------------------------------------------------------------------------
    def _ref(self, sha: str) -> CandidateRef:
        tree = self._trees.get(sha)
        if tree is None:
            tree = self._trees[sha] = self.repo.tree_sha(sha)
        return CandidateRef(sha=sha, tree=tree, archive=lambda: self.repo.archive(sha))

    def save_progress(self) -> None:
        """Write the usage counters to the store (also called by the driver on Ctrl-C)."""
        with self._lock:
            self._tick_locked()

    def _tick_locked(self) -> None:
        now = time.monotonic()
        self.usage = replace(self.usage, seconds=self.usage.seconds + (now - self._clock), usd=self.usd_spent())
        self._clock = now
        self.store.update_run(self.run_name, iteration=self.usage.iterations, evals_used=self.usage.evals,
                              usd_used=self.usage.usd, elapsed_s=self.usage.seconds)

    def _evaluate(self, sha: str, ids: Sequence[str], split: str) -> list[InstanceResult] | None:
        """Results, or None when the budget does not allow the evaluator calls this needs."""
        ref = self._ref(sha)
        with self._lock:
            missing = self.evaluator.missing(ref, ids)
            self._tick_locked()
            if evals_exhausted(self.budget, replace(self.usage, evals=self.usage.evals + self._reserved), missing):
                return None
            self._reserved += missing
        try:
            results = self.evaluator.evaluate(ref, [(i, split) for i in ids])
        finally:
            with self._lock:
                self._reserved -= missing
        with self._lock:
            self.usage = replace(self.usage, evals=self.usage.evals + sum(r.repeats for r in results if not r.cached))
            self._tick_locked()
        return results

    def _budget_stop(self, needed: int) -> str:
        with self._lock:
            used = replace(self.usage, evals=self.usage.evals + self._reserved)
            return evals_exhausted(self.budget, used, needed) or (
                f"evaluator-call budget: {self.usage.evals} used of {self.budget.max_evals}")

    def _emit(self, kind: str, message: str) -> None:
        if self.on_event is None:
            return
        with self._lock:
            frontier = self.frontier()
            self.on_event(Event(kind, self.usage.iterations, message, self.usage, len(frontier.members),
                                self.best_objectives()))

    def _record_val(self, sha: str, results: Sequence[InstanceResult]) -> float:
        """Keep a candidate's validation results for the frontier; returns its mean score."""
        scores = scores_from_results(sha, results, self.task.objectives)
        with self._lock:
            self.val_scores[sha] = scores
            self._frontier = None
        return scores.objectives["score"] or 0.0

    # -- views -------------------------------------------------------------------------------------------
    def frontier(self) -> Frontier:
        # Rebuilt only when an accepted candidate joins: selection and the live view reuse it.
        if self._frontier is None:
            self._frontier = build_frontier(list(self.val_scores.values()), self.val, self.task.objectives,
                                            self.config.frontier)
        return self._frontier

    def best(self) -> str | None:
        if not self.val_scores:
            return None
        return max(self.val_scores, key=lambda s: rank_key(self.val_scores[s].objectives, self.task.objectives))

    def best_objectives(self) -> dict[str, float | None] | None:
        b = self.best()
        return dict(self.val_scores[b].objectives) if b else None

    # -- the run -----------------------------------------------------------------------------------------
    def start(self, seed_sha: str) -> None:
        """Load the accepted candidates (seed first) with their validation results from the cache."""
        accepted = [seed_sha] + [p.child_sha for p in self.store.proposals(self.run_name, status="accepted")
                                 if p.child_sha]
        for sha in accepted:
            results = self._evaluate(sha, self.val, "val")
            if results is None:
                raise BudgetTooSmall("the budget does not cover evaluating the seed on the validation split "
                                     f"({len(self.val)} evaluator calls)")
            self._record_val(sha, results)
        for p in self.store.proposals(self.run_name, status="pending"):
            self._finish_pending(p)

    def run(self) -> str:
        """Iterate until a budget or stopping rule says stop (with `workers` iterations in flight); returns why."""
        workers = max(1, self.config.workers)
        if workers == 1:
            self._work()
        else:
            threads = [threading.Thread(target=self._work, name=f"evolver-iteration-{k}", daemon=True)
                       for k in range(workers)]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(0.2)
            except BaseException:
                self._stopping = self._stopping or "interrupted"
                raise
        if self._error is not None:
            raise self._error
        reason = self._stopping or "stopped"
        self.save_progress()
        self.store.update_run(self.run_name, state="stopped", stop_reason=reason)
        self._emit("stopped", reason)
        return reason

    def _claim(self) -> int | None:
        """The next iteration's number, or None when the run must stop (the reason is in _stopping)."""
        with self._lock:
            if self._stopping is None:
                reason = stop_reason(self.budget, self.usage)
                if reason is None and self.llm_error_streak >= LLM_ERROR_STREAK_STOP:
                    reason = (f"the LLM failed {self.llm_error_streak} times in a row after retries; see "
                              "`evolver show` of the last proposal, fix the model or server, then `evolver resume`")
                self._stopping = reason
            if self._stopping is not None:
                return None
            self.usage = replace(self.usage, iterations=self.usage.iterations + 1)
            return self.usage.iterations

    def _work(self) -> None:
        try:
            while (it := self._claim()) is not None:
                outcome = self.iterate(it)
                if outcome is not None:
                    with self._lock:
                        self._stopping = self._stopping or outcome
        except BaseException as exc:  # a worker's failure stops the run and reaches the caller
            with self._lock:
                self._error = self._error or exc
                self._stopping = self._stopping or f"error: {exc}"
            if threading.current_thread() is threading.main_thread():
                raise

    def iterate(self, it: int) -> str | None:
        """Iteration `it`; returns a stop reason when the budget ran out mid-way."""
        merged = self._try_merge(it)
        if merged != NO_MERGE:
            return merged
        rng = random.Random(f"{self.config.seed}:{it}")
        with self._lock:
            parent = self.frontier().select(rng)
        minibatch = rng.sample(self.train, min(self.config.minibatch, len(self.train)))
        parent_results = self._evaluate(parent, minibatch, "train")
        if parent_results is None:
            return self._budget_stop(len(minibatch))
        pid = self.store.add_proposal(self.run_name, it, self.proposer.name, parent, minibatch,
                                      sum(r.score for r in parent_results))
        proposal = self.proposer.propose(self._context(parent, parent_results, it), rng)
        self.save_progress()
        if not proposal.ok:
            self._fail(pid, parent, it, proposal, parent_results)
            return None
        tree = self.repo.tree_of_changes(parent, dict(proposal.changes))
        branch = candidate_branch(self.run_name, pid)
        with self._lock:  # check and claim at once: two iterations in flight may propose the same files
            owner = self._known.get(tree)
            if owner is None:
                self._known[tree] = branch
        if owner is not None:
            self._fail(pid, parent, it, replace(proposal, failure="duplicate",
                                                detail=f"the same files as {owner}, already evaluated"),
                       parent_results)
            return None
        child = self.repo.commit_tree(
            tree, (parent,), subject=proposal.change.splitlines()[0][:72] if proposal.change else "mutation",
            kind=self.proposer.name, body=f"Diagnosis: {proposal.diagnosis}".strip(), run=self.run_name)
        self._trees[child] = tree
        self.repo.set_branch(branch, child)
        self.store.record_candidate(self.run_name, child, tree, branch, (parent,), self.proposer.name)
        with self._lock:
            self._parents[child] = (parent,)
        self.store.update_proposal(pid, child_sha=child, branch=branch, diagnosis=proposal.diagnosis,
                                   change=proposal.change, files=sorted(proposal.changes),
                                   failure_kinds=sorted({r.status for r in parent_results if not r.ok}))
        row = self.store.proposals(self.run_name, child_sha=child)[-1]
        return self._decide(row, parent_results)

    def _finish_pending(self, p: ProposalRow) -> None:
        """A proposal interrupted by a kill: judge its committed child, or record that it never got one."""
        if p.child_sha is None:
            # Killed between committing the child (its candidate row is written first) and recording it on
            # the proposal: adopt it, or its tree would count as a duplicate of something never evaluated.
            branch = candidate_branch(self.run_name, p.id)
            orphan = next((c for c in self.store.candidates(self.run_name) if c.branch == branch), None)
            if orphan is not None:
                self.store.update_proposal(p.id, child_sha=orphan.sha, branch=branch)
                p = replace(p, child_sha=orphan.sha, branch=branch)
        if p.kind == "merge":
            return self._finish_merge(p)
        if p.child_sha is None:
            self.store.update_proposal(p.id, status="failed", reason="interrupted",
                                       detail="the run stopped before the child was committed")
            return
        parent_results = self._evaluate(p.parent_sha, p.minibatch, "train")
        if parent_results is not None:
            self._decide(p, parent_results)

    def _decide(self, p: ProposalRow, parent_results: Sequence[InstanceResult]) -> str | None:
        assert p.child_sha is not None
        child_results = self._evaluate(p.child_sha, p.minibatch, "train")
        if child_results is None:
            return self._budget_stop(len(p.minibatch))
        parent_sum = sum(r.score for r in parent_results)
        child_sum = sum(r.score for r in child_results)
        crashed = all(r.status in FAILED_STATUSES for r in child_results)
        better = child_sum > parent_sum or (self.config.accept == "ties" and child_sum >= parent_sum)
        if crashed or not better:
            reason = "crashed" if crashed else "worse"
            detail = condense(child_results, budget=1500, include_ok_feedback=False) if crashed else (
                f"minibatch sum {child_sum:.4g} vs parent {parent_sum:.4g}")
            self.store.update_proposal(p.id, status="rejected", reason=reason, detail=detail, child_score=child_sum)
            self._lesson(p, "rejected", reason, child_sum - parent_sum)
            self._count_failure(reason)
            self._emit("iteration", f"c{p.id} rejected ({reason}): {detail.splitlines()[0][:100]}")
            return None
        val_results = self._evaluate(p.child_sha, self.val, "val")
        if val_results is None:  # left pending: `resume` with a larger budget finishes it
            self.store.update_proposal(p.id, child_score=child_sum, detail="accepted on the minibatch; "
                                       "validation not run: budget")
            return self._budget_stop(len(self.val))
        with self._lock:
            return self._accept(p, val_results, child_sum, parent_sum)

    def _accept(self, p: ProposalRow, val_results: Sequence[InstanceResult], child_sum: float,
                parent_sum: float, label: str = "minibatch") -> None:
        assert p.child_sha is not None
        before = self.best_objectives() or {}
        val_score = self._record_val(p.child_sha, val_results)
        self.store.update_proposal(p.id, status="accepted", reason="accepted", child_score=child_sum,
                                   val_score=val_score, detail=f"{label} sum {child_sum:.4g} vs {parent_sum:.4g}")
        self._lesson(p, "accepted", "accepted", child_sum - parent_sum)
        improved = not before or rank_key(self.val_scores[p.child_sha].objectives, self.task.objectives) > rank_key(
            before, self.task.objectives)
        self.usage = replace(self.usage, best_score=max(val_score, self.usage.best_score or float("-inf")),
                             since_improvement=0 if improved else self.usage.since_improvement + 1)
        self.failing_streak = 0
        if p.kind != "merge":  # each accepted mutation schedules one merge attempt
            self._accepted_mutations += 1
        self._emit("iteration", f"c{p.id} accepted: {label} {child_sum:.4g} vs {parent_sum:.4g}, val {val_score:.4g}")
        return None

    def _fail(self, pid: int, parent: str, it: int, proposal: Proposal, parent_results) -> None:
        self.store.update_proposal(pid, status="failed", reason=proposal.failure or "failed",
                                   detail=proposal.detail[:4000], diagnosis=proposal.diagnosis,
                                   change=proposal.change,
                                   failure_kinds=sorted({r.status for r in parent_results if not r.ok}))
        row = next(p for p in self.store.proposals(self.run_name, parent_sha=parent) if p.id == pid)
        self._lesson(row, "failed", proposal.failure or "failed", None)
        self._count_failure(proposal.failure or "failed")
        self._emit("iteration", f"proposal {pid} failed ({proposal.failure}): {proposal.detail[:100]}")

    def _no_improvement(self) -> None:
        """A merge that produced nothing better: patience counts it, the failing-proposals warning does not."""
        with self._lock:
            self.usage = replace(self.usage, since_improvement=self.usage.since_improvement + 1)

    def _count_failure(self, reason: str) -> None:
        with self._lock:
            self._count_failure_locked(reason)

    def _count_failure_locked(self, reason: str) -> None:
        self.llm_error_streak = self.llm_error_streak + 1 if reason == "llm_error" else 0
        # A worse or duplicate child is a working proposal that lost; the warning is for proposals that yield
        # nothing evaluable (edits that do not apply, no-ops, LLM errors, children that crash).
        self.failing_streak = 0 if reason in ("worse", "duplicate") else self.failing_streak + 1
        self.usage = replace(self.usage, since_improvement=self.usage.since_improvement + 1)
        if self.failing_streak == FAILING_STREAK_WARNING:
            self._emit("warning", f"the last {FAILING_STREAK_WARNING} proposals all failed to give a working "
                                  f"child (latest: {reason}); check the model, the task's feedback, or "
                                  "`evolver show` of a failed one")

    def _lesson(self, p: ProposalRow, outcome: str, reason: str, delta: float | None) -> None:
        self.lessons.append(Lesson(
            task=self.task.name, run=self.run_name, iteration=p.iteration, parent=p.parent_sha, child=p.child_sha,
            files=tuple(p.files), failure_kinds=tuple(p.failure_kinds), diagnosis=p.diagnosis, change=p.change,
            outcome=outcome, reason=reason, delta=delta))

    def _context(self, parent: str, results: Sequence[InstanceResult], it: int) -> ProposalContext:
        files = {path: data.decode("utf-8", errors="replace")
                 for path, data in self.repo.read_files(parent).items() if self.task.is_mutable(path)}
        kinds = {r.status for r in results if not r.ok}
        tried = [f"{p.reason}: {p.change or p.detail}".strip()[:300]
                 for p in self.store.proposals(self.run_name, parent_sha=parent)
                 if p.status in ("rejected", "failed") and p.kind != "merge"][-self.config.tried_shown:]
        return ProposalContext(
            task=self.task, parent_sha=parent, parent_files=files, results=results,
            evidence=condense(results), lessons=relevant(self.lessons.load(self.task.name), files, kinds),
            tried=tried, iteration=it)


class BudgetTooSmall(EvolverError):
    """The budget cannot even pay for the seed's validation evaluation."""
