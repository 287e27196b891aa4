"""The reflective evolution loop: plan -> propose -> check -> commit -> evaluate -> accept, one path for every
kind of proposal.

An iteration makes a `Plan` (a merge of two frontier candidates when one is due and a pair is eligible, else a
mutation of a parent sampled from the frontier), asks the plan's proposer for a `Proposal`, and then, whatever
proposed it: checks it (mutable files only, syntax, not a duplicate), commits the child (a two-parent commit
for a merge), evaluates it on the plan's instances, and accepts it when it beats the plan's baseline; an
accepted child is validated in full and joins the standings. Every step is written to the store (and the child
to git) as it happens, so a kill -9 loses at most the step in flight and `resume` finishes a committed child
from its stored plan. Randomness is derived from (seed, iteration), so a resumed run makes the same choices.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from ..config import FAILED_STATUSES, LOST_REASONS, Defaults
from ..errors import EvolverError
from ..evaluation import CandidateEvaluator, CandidateRef, InstanceResult
from ..evidence import condense
from ..lessons import LessonLog
from ..proposers.base import MergeRecord, Proposal, Proposer
from ..repo import RunRepo, candidate_branch
from ..run_state import Standings, accepted_order, validation_ids
from ..store import ProposalRow, Store
from ..task import Task
from . import checks
from .budget import Budget, StopReason, Usage, budget_advice, evals_exhausted, stop_reason
from .context import ContextBuilder
from .plans import MergePlanner, Plan, mutation_plan, plan_of

# The proposal the current thread is asking its proposer for (None outside a proposal). Set by the engine around
# `propose`, so whatever records an LLM call made in that thread (with --workers N, each worker thread sets its
# own) links the call to its proposal without the proposers passing ids around.
current_proposal: ContextVar[int | None] = ContextVar("evolver_current_proposal", default=None)


@dataclass(frozen=True)
class LoopConfig:
    minibatch: int = Defaults.minibatch
    accept: str = Defaults.accept  # strict: child sum > parent sum; ties: >=
    frontier: str = Defaults.frontier
    seed: int = Defaults.seed_rng
    workers: int = Defaults.workers  # iterations in flight at once (proposals and their evaluations)
    tried_shown: int = Defaults.tried_shown
    merge: bool = Defaults.merge  # merge two frontier candidates now and then (GEPA's schedule)
    max_merges: int = Defaults.max_merges  # merge attempts over the run
    merge_subsample: int = Defaults.merge_subsample  # validation instances a merged candidate is first judged on

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


class Engine:
    def __init__(self, *, task: Task, run: str, repo: RunRepo, store: Store, evaluator: CandidateEvaluator,
                 proposer: Proposer, lessons: LessonLog, budget: Budget, config: LoopConfig,
                 on_event: Callable[[Event], None] | None = None, usd_spent: Callable[[], float] = lambda: 0.0,
                 merger: Proposer | None = None):
        self.task, self.run_name, self.repo, self.store = task, run, repo, store
        self.evaluator, self.proposer, self.lessons, self.merger = evaluator, proposer, lessons, merger
        self.budget, self.config, self.on_event, self.usd_spent = budget, config, on_event, usd_spent
        self.train = [i for i in (task.instances.train if task.instances else ())]
        if not self.train:
            raise EvolverError("an evolution run needs instances: a train split (and a val split to generalise)")
        self.val = validation_ids(task)
        # Calls promised to batches of a process that died (kill -9) were possibly made: they count as spent.
        self.recovered_evals = store.recover_reserved(run)
        row = store.run(run)
        assert row is not None, "create the run in the store first"
        # Views read the run's results under the key they were stored with: this evaluator's.
        store.update_run(run, config={**row.config, "eval_key": evaluator.cache_key})
        self.usage = Usage(evals=row.evals_used, usd=row.usd_used, seconds=row.elapsed_s, iterations=row.iteration)
        self.standings = Standings(self.val, task.objectives, config.frontier)
        candidates = store.candidates(run)
        self._trees: dict[str, str] = {c.sha: c.tree for c in candidates}  # commits never change
        # Trees of every candidate of the run -> its branch: a proposal recreating one is a duplicate.
        self._known: dict[str, str] = {c.tree: c.branch or c.sha[:12] for c in candidates}
        self._labels = {c.sha: (c.branch or c.sha[:10]).rsplit("/", 1)[-1] for c in candidates}
        parents = {c.sha: c.parents for c in candidates}
        self.planner = MergePlanner(
            max_merges=config.max_merges, subsample=config.merge_subsample, parents=parents,
            proposals=store.proposals(run), merges=store.merges(run), merge_base=repo.merge_base,
            overlap=self._overlap) if merger is not None and config.merge else None
        self.contexts = ContextBuilder(task, run, repo, store, lessons, self.standings, self.label, parents,
                                       config.tried_shown, evaluator.cache_key)
        self.failing_streak = 0
        self.llm_error_streak = 0  # LLM calls that failed after all retries, in a row
        self._last_llm_error = ""  # the latest of them, for the message of the stop they cause
        # Proposals in a row that cost nothing and found nothing (no-ops, duplicates): a proposer that has run out
        # of new ideas (the builtin one on a small program) would otherwise iterate for ever.
        self.nothing_new_streak = 0
        self._clock = time.monotonic()
        # Guards the engine's state (usage, standings, known trees) when several iterations run at once; LLM
        # calls and evaluations run outside it. The store and the repo are safe to use concurrently.
        self._lock = threading.RLock()
        self._reserved = 0  # evaluator calls promised to batches in flight, so parallel batches never overshoot
        self._stopping: StopReason | None = None
        self._error: BaseException | None = None

    # -- helpers -----------------------------------------------------------------------------------------
    def label(self, sha: str) -> str:
        return self._labels.get(sha, sha[:10])

    def _overlap(self, a: str, b: str, base: str) -> int:
        from ..proposers.merge import overlapping_hunks

        # Over the mutable files only: a seed may hold large data files no mutation touches.
        files = [{p: d for p, d in self.repo.read_files(s).items() if self.task.is_mutable(p)} for s in (base, a, b)]
        return overlapping_hunks(*files)

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

    def time_left(self) -> float | None:
        """Seconds left in the run's time budget (None: it has none), counted like `usage.seconds`: what
        bounds every LLM call, so a hanging server cannot hold the run past its budget."""
        if self.budget.max_seconds is None:
            return None
        with self._lock:
            used = self.usage.seconds + (time.monotonic() - self._clock)
        return self.budget.max_seconds - used

    def stop(self, reason: StopReason) -> None:
        """Stop the run after the iterations in flight (the first reason given wins); thread-safe."""
        with self._lock:
            self._stopping = self._stopping or reason

    def _evaluate(self, sha: str, ids: Sequence[str], split: str, seed: bool = False) -> list[InstanceResult] | None:
        """Results, or None when the budget does not allow the evaluator calls this needs.

        The calls are reserved in the store before the batch starts and settled with the calls made once it
        returns: a process killed in between leaves them reserved, and the next start counts them as spent.
        A result the task's evaluator failed on (not the candidate) stops the run: see `_check_evaluator`."""
        ref = self._ref(sha)
        with self._lock:
            missing = self.evaluator.missing(ref, ids)
            self._tick_locked()
            if evals_exhausted(self.budget, replace(self.usage, evals=self.usage.evals + self._reserved), missing):
                return None
            if missing:
                self.store.reserve_evals(self.run_name, missing)
            self._reserved += missing
        made = 0
        try:
            results = self.evaluator.evaluate(ref, [(i, split) for i in ids])
            made = sum(r.ran for r in results)
        finally:
            with self._lock:
                self._reserved -= missing
                if missing:  # a batch that raised (Ctrl-C, an engine failure) may have run: count it as spent
                    self.usage = replace(self.usage, evals=self.usage.evals + (made if made else missing))
                    self.store.settle_evals(self.run_name, missing, self.usage.evals)
                self._tick_locked()
        self._check_evaluator(results, split, seed)
        return results

    def _check_evaluator(self, results: Sequence[InstanceResult], split: str, seed: bool = False) -> None:
        """The task's evaluator failed (prepare or judge raised, a malformed result): its author's bug, which no
        candidate can fix; every further call would be spent on it. Stop with its traceback."""
        fatal = ("evaluator_error", "sandbox_error") if seed else ("evaluator_error",)
        bad = [r for r in results if r.status in fatal]
        if bad:
            first = bad[0]
            names = ", ".join(r.instance for r in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise EvaluatorFault(first.status, f"the task's evaluator failed on {len(bad)} {split} instance(s) "
                                 f"({names}); fix the task (its files are unchanged for this run: start a new "
                                 f"run once fixed). {first.status} on {first.instance}:\n{first.feedback[-2500:]}")

    def _budget_stop(self, needed: int) -> StopReason:
        with self._lock:
            used = replace(self.usage, evals=self.usage.evals + self._reserved)
            return StopReason("budget", evals_exhausted(self.budget, used, needed) or (
                f"evaluator-call budget: {self.usage.evals} used of {self.budget.max_evals}"))

    def _emit(self, kind: str, message: str) -> None:
        if self.on_event is None:
            return
        with self._lock:
            self.on_event(Event(kind, self.usage.iterations, message, self.usage,
                                len(self.standings.frontier().members), self.standings.best_objectives()))

    # -- views (the standings are the one source; run_state reads the same from the store) ---------------
    def best(self) -> str | None:
        return self.standings.best()

    def best_objectives(self) -> dict[str, float | None] | None:
        return self.standings.best_objectives()

    # -- the run -----------------------------------------------------------------------------------------
    def start(self, seed_sha: str) -> None:
        """Load the accepted candidates (seed first) with their validation results, then finish what a kill
        left pending."""
        self._labels.setdefault(seed_sha, "seed")
        advice = budget_advice(self.budget, len(self.val), self.config.minibatch, self.task.repeats, self.usage.evals)
        if advice:
            self._emit("warning", advice)
        accepted = accepted_order(seed_sha, self.store.proposals(self.run_name))
        for sha, order in accepted:
            # The seed first: an evaluator or sandbox that cannot score it stops the run before any proposal.
            results = self._evaluate(sha, self.val, "val", seed=sha == seed_sha)
            if results is None:
                missing = sum(self.evaluator.missing(self._ref(s), self.val) for s, _ in accepted)
                what = "the seed" if len(accepted) == 1 else f"the {len(accepted)} accepted candidates (seed included)"
                raise BudgetTooSmall(f"the budget does not cover validating {what} on the validation split: "
                                     f"{missing} more evaluator calls are needed ({self.usage.evals} used of "
                                     f"{self.budget.max_evals}); give a larger --budget-evals")
            self.standings.add(sha, results, order)
        unfinished = self.store.proposals(self.run_name, status="pending") + [
            p for p in self.store.proposals(self.run_name, status="failed") if p.reason == "budget" and p.child_sha]
        for p in sorted(unfinished, key=lambda p: p.id):
            self._finish_pending(p)

    def run(self) -> StopReason:
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
                self.stop(StopReason("interrupted", "interrupted"))
                raise
        if self._error is not None:
            raise self._error
        # Workers end only when _claim found a reason (or an error, raised above).
        reason = self._stopping or StopReason("error", "stopped without a recorded reason")
        self.save_progress()
        self.store.update_run(self.run_name, state="stopped", stop_reason=reason.message, stop_kind=reason.kind)
        self._emit("stopped", reason.message)
        return reason

    def _claim(self) -> int | None:
        """The next iteration's number, or None when the run must stop (the reason is in _stopping)."""
        with self._lock:
            if self._stopping is None:
                reason = stop_reason(self.budget, self.usage)
                if reason is None and self.llm_error_streak >= Defaults.llm_error_streak_stop:
                    reason = StopReason("llm_failure", f"the LLM failed {self.llm_error_streak} times in a row after "
                                                       f"retries (the last time: {self._last_llm_error}); check the "
                                                       "model and its server")
                if reason is None and self.nothing_new_streak >= Defaults.nothing_new_stop:
                    reason = StopReason("nothing_new", f"nothing new: the last {self.nothing_new_streak} proposals "
                                        "changed nothing or repeated a candidate (the proposer has run out of ideas "
                                        "for this program)")
                if reason is None:  # an iteration that could not even evaluate a child is not started (nor counted)
                    smallest = min(self.config.minibatch, len(self.train)) * self.task.repeats
                    short = evals_exhausted(self.budget, replace(self.usage, evals=self.usage.evals + self._reserved),
                                            smallest)
                    reason = StopReason("budget", short) if short else None
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
                    self.stop(outcome)
        except BaseException as exc:  # a worker's failure stops the run and reaches the caller
            with self._lock:
                self._error = self._error or exc
            self.stop(StopReason("interrupted", "interrupted") if isinstance(exc, KeyboardInterrupt)
                      else StopReason("error", f"error: {exc}"))
            if threading.current_thread() is threading.main_thread():
                raise

    def iterate(self, it: int) -> StopReason | None:
        """Iteration `it`; returns a stop reason when the budget ran out mid-way."""
        if self.planner is not None and self.merger is not None:
            rng = random.Random(f"{self.config.seed}:{it}:merge")
            with self._lock:
                plan = self.planner.plan(self.standings, rng)
            if plan is not None:
                return self._attempt(it, plan, self.merger, rng)
        rng = random.Random(f"{self.config.seed}:{it}")
        with self._lock:
            plan = mutation_plan(self.standings, self.train, self.config.minibatch, self.config.accept == "ties", rng)
        return self._attempt(it, plan, self.proposer, rng)

    def _attempt(self, it: int, plan: Plan, proposer: Proposer, rng: random.Random) -> StopReason | None:
        """Store the plan, ask its proposer, then land the proposal."""
        parent_results: list[InstanceResult] = []
        if not plan.is_merge:
            got = self._evaluate(plan.parents[0], plan.instances, plan.split)
            if got is None:
                return self._budget_stop(len(plan.instances))
            parent_results = got
            plan = replace(plan, baseline=sum(r.score for r in parent_results))
        # No proposal (and no paid LLM call) that the budget could not evaluate: the child's calls are held for it
        # (in memory) from here until its evaluation reserves them, so iterations in flight cannot all pass.
        needed = len(plan.instances) * self.task.repeats
        with self._lock:
            short = evals_exhausted(self.budget, replace(self.usage, evals=self.usage.evals + self._reserved), needed)
            if short:
                return StopReason("budget", short)
            self._reserved += needed
        held = [needed]
        try:
            pid = self.store.add_proposal(self.run_name, it, plan.kind, plan.parents[0], list(plan.instances),
                                          plan.baseline, parents=plan.parents, proposer=proposer.name)
            try:
                return self._propose_and_land(pid, it, plan, proposer, rng, parent_results, held)
            except EvaluatorFault as exc:
                self.store.update_proposal(pid, status="failed", reason="evaluator_error", detail=str(exc)[:4000])
                self._lesson(self._proposal(pid), "failed", "evaluator_error", None)
                raise
        finally:
            self._release(held)

    def _release(self, held: list[int]) -> None:
        """Give back calls held for a child (once: the holder may have released them already)."""
        with self._lock:
            self._reserved -= held[0]
            held[0] = 0

    def _propose_and_land(self, pid: int, it: int, plan: Plan, proposer: Proposer, rng: random.Random,
                          parent_results: Sequence[InstanceResult], held: list[int]) -> StopReason | None:
        if plan.is_merge:
            assert plan.base is not None
            self.store.add_merge(pid, self.run_name, *plan.parents, plan.base, *plan.parent_sums)
            ctx = self.contexts.merge(plan, it)
        else:
            ctx = self.contexts.mutation(plan, parent_results, it)
        linked = current_proposal.set(pid)
        try:
            proposal = proposer.propose(ctx, rng)
        except (RuntimeError, ValueError, RecursionError, OSError) as exc:
            if not plan.is_merge:
                raise
            # Recorded as this pair's failed attempt: raised, it would stop the run, and resume would pick the
            # same pair again and stop again.
            proposal = Proposal(failure="merge_error", detail=f"{type(exc).__name__}: {exc}",
                                merge=MergeRecord(resolution="failed"))
        finally:
            current_proposal.reset(linked)
        self.save_progress()
        if proposal.merge is not None:
            self.store.update_merge(pid, conflicts=proposal.merge.conflicts, resolution=proposal.merge.resolution,
                                    contributions=list(proposal.merge.contributions))
        return self._land(pid, plan, proposal, proposer.name, parent_results, held)

    def _land(self, pid: int, plan: Plan, proposal: Proposal, made_by: str,
              parent_results: Sequence[InstanceResult], held: list[int] | None = None) -> StopReason | None:
        """Check, commit and record a proposal, then judge its child."""
        failure_kinds = sorted({r.status for r in parent_results if not r.ok})
        found = (proposal.failure, proposal.detail) if proposal.failure else checks.problem(self.task,
                                                                                           proposal.changes)
        tree = branch = None
        if found is None:
            tree = self.repo.tree_of_changes(plan.parents[0], dict(proposal.changes))
            branch = candidate_branch(self.run_name, pid)
        if tree is not None and tree == self._ref(plan.parents[0]).tree:
            found = ("noop", "the changes leave the parent's files as they were")
        elif tree is not None and branch is not None:
            with self._lock:  # check and claim at once: two iterations in flight may propose the same files
                owner = self._known.get(tree)
                if owner is None:
                    self._known[tree] = branch
            if owner is not None:
                found = ("duplicate", f"the same files as {owner}, already evaluated")
        if found is not None or tree is None or branch is None:
            failure, detail = found or ("failed", "")
            self.store.update_proposal(pid, status="failed", reason=failure or "failed", detail=detail[:4000],
                                       diagnosis=proposal.diagnosis, change=proposal.change,
                                       operator=proposal.operator, files=sorted(proposal.changes),
                                       failure_kinds=failure_kinds)
            self._failed(self._proposal(pid), plan, failure or "failed", detail)
            return None
        subject = (proposal.change.splitlines()[0][:72] if proposal.change else plan.kind)
        body = f"Diagnosis: {proposal.diagnosis}\nProposer: {made_by}" if proposal.diagnosis else f"Proposer: {made_by}"
        child = self.repo.commit_tree(tree, plan.parents, subject=subject, kind=plan.kind, body=body,
                                      run=self.run_name)
        self._trees[child] = tree
        self.repo.set_branch(branch, child)
        self.store.record_candidate(self.run_name, child, tree, branch, plan.parents, plan.kind)
        with self._lock:
            self._labels[child] = f"c{pid}"
            self.contexts.parents[child] = plan.parents  # type: ignore[index]
            if self.planner is not None:
                self.planner.add_candidate(child, plan.parents)
        self.store.update_proposal(pid, child_sha=child, branch=branch, diagnosis=proposal.diagnosis,
                                   change=proposal.change, operator=proposal.operator,
                                   files=sorted(proposal.changes), failure_kinds=failure_kinds)
        if held is not None:
            self._release(held)  # the child's evaluation reserves its calls itself
        return self._judge(self._proposal(pid), plan)

    def _proposal(self, pid: int) -> ProposalRow:
        row = self.store.proposal(pid)
        assert row is not None
        return row

    def _finish_pending(self, p: ProposalRow) -> None:
        """A proposal interrupted by a kill: judge its committed child, or record that it never got one."""
        if p.child_sha is None:
            # Killed between committing the child (its candidate row is written first) and recording it on
            # the proposal: adopt it, or its tree would count as a duplicate of something never evaluated.
            branch = candidate_branch(self.run_name, p.id)
            orphan = next((c for c in self.store.candidates(self.run_name) if c.branch == branch), None)
            if orphan is None:
                self.store.update_proposal(p.id, status="failed", reason="interrupted",
                                           detail="the run stopped before the child was committed")
                self._lesson(self._proposal(p.id), "failed", "interrupted", None)
                return
            self.store.update_proposal(p.id, child_sha=orphan.sha, branch=branch)
            p = replace(p, child_sha=orphan.sha, branch=branch)
            self._labels[orphan.sha] = f"c{p.id}"
        plan = plan_of(p, self.config.accept == "ties", self.store.merge(p.id))
        if plan.baseline is None:
            parent_results = self._evaluate(plan.parents[0], plan.instances, plan.split)
            if parent_results is None:
                return
            plan = replace(plan, baseline=sum(r.score for r in parent_results))
        self._judge(p, plan)

    def _judge(self, p: ProposalRow, plan: Plan) -> StopReason | None:
        assert p.child_sha is not None and plan.baseline is not None
        child_results = self._evaluate(p.child_sha, plan.instances, plan.split)
        if child_results is None:
            why = self._budget_stop(len(plan.instances))
            self._out_of_budget(p, f"not evaluated: {why.message}")
            return why
        child_sum = sum(r.score for r in child_results)
        crashed = all(r.status in FAILED_STATUSES for r in child_results)
        better = child_sum > plan.baseline or (plan.at_least and child_sum >= plan.baseline)
        versus = plan.versus(child_sum, [self.label(s) for s in plan.parents])
        if crashed or not better:
            reason = "crashed" if crashed else "worse"
            detail = condense(child_results, budget=1500, include_ok_feedback=False) if crashed else versus
            self.store.update_proposal(p.id, status="rejected", reason=reason, detail=detail, child_score=child_sum)
            self._lesson(p, "rejected", reason, child_sum - plan.baseline)
            with self._lock:
                self._count(plan, reason)
            self._emit("iteration", f"{self.label(p.child_sha)} {'merge ' if plan.is_merge else ''}rejected "
                                    f"({reason}): {detail.splitlines()[0][:100]}")
            return None
        val_results = self._evaluate(p.child_sha, self.val, "val")
        if val_results is None:
            why = self._budget_stop(len(self.val))
            self._out_of_budget(p, f"accepted on the {versus}; validation not run: {why.message}", child_sum)
            return why
        with self._lock:
            self._accept(p, plan, val_results, child_sum, versus)
        return None

    def _out_of_budget(self, p: ProposalRow, detail: str, child_score: float | None = None) -> None:
        """A committed child the budget cannot judge: its outcome is `budget` (with its lesson), and `resume` with
        a larger budget judges it then."""
        again = p.status == "failed" and p.reason == "budget"  # judged again on resume, still out of budget
        self.store.update_proposal(p.id, status="failed", reason="budget", detail=detail, child_score=child_score)
        if not again:
            self._lesson(self._proposal(p.id), "failed", "budget", None)

    def _accept(self, p: ProposalRow, plan: Plan, val_results: Sequence[InstanceResult], child_sum: float,
                versus: str) -> None:
        assert p.child_sha is not None and plan.baseline is not None
        before = self.standings.best_objectives()
        self.standings.add(p.child_sha, val_results, p.id)
        val_score = self.standings.mean_score(p.child_sha)
        self.store.update_proposal(p.id, status="accepted", reason="accepted", child_score=child_sum,
                                   val_score=val_score, detail=versus)
        self._lesson(p, "accepted", "accepted", child_sum - plan.baseline)
        improved = self.standings.improves_on(p.child_sha, before)
        self.usage = replace(self.usage, best_score=max(val_score, self.usage.best_score or float("-inf")),
                             since_improvement=0 if improved else self.usage.since_improvement + 1)
        self.failing_streak = self.nothing_new_streak = 0
        if self.planner is not None:
            self.planner.accepted(plan)  # each accepted mutation schedules one merge attempt
        self._emit("iteration", f"c{p.id} accepted: {versus}, val {val_score:.4g}")

    def _failed(self, p: ProposalRow, plan: Plan, failure: str, detail: str) -> None:
        self._lesson(p, "failed", failure, None)
        with self._lock:
            if failure == "llm_error":
                self._last_llm_error = detail.splitlines()[0] if detail else "no detail"
            if plan.is_merge and failure == "llm_error" and self.planner is not None:
                # An LLM outage says nothing about the pair: it stays eligible and the attempt is not counted,
                # but the failure counts towards the streak that stops a run whose LLM keeps failing.
                self.planner.release(plan)
                self.llm_error_streak += 1
            else:
                self._count(plan, failure)
        what = "merge" if plan.is_merge else "proposal"
        self._emit("iteration", f"{what} {p.id} failed ({failure}): {detail.splitlines()[0][:100] if detail else ''}")

    def _count(self, plan: Plan, reason: str) -> None:
        """Streaks and patience after an outcome that was not an acceptance (called under the lock)."""
        self.usage = replace(self.usage, since_improvement=self.usage.since_improvement + 1)
        self.nothing_new_streak = self.nothing_new_streak + 1 if reason in ("noop", "duplicate") else 0
        if plan.is_merge:
            return  # a merge that produced nothing better: patience counts it, the failing-proposals warning not
        self.llm_error_streak = self.llm_error_streak + 1 if reason == "llm_error" else 0
        # A worse or duplicate child is a working proposal that lost; the warning is for proposals that yield
        # nothing evaluable (edits that do not apply, no-ops, LLM errors, children that crash).
        self.failing_streak = 0 if reason in LOST_REASONS else self.failing_streak + 1
        if self.failing_streak == Defaults.failing_streak_warning:
            self._emit("warning", f"the last {Defaults.failing_streak_warning} proposals all failed to give a "
                                  f"working child (latest: {reason}); check the model, the task's feedback, or "
                                  "`evolver show` of a failed one")

    def _lesson(self, p: ProposalRow, outcome: str, reason: str, delta: float | None) -> None:
        self.lessons.append(self.contexts.lesson(p, outcome, reason, delta))


class EvaluatorFault(EvolverError):
    """The task's evaluator (or, for the seed, the sandbox) failed: not something a candidate can fix."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if status == "evaluator_error" else 1  # the task's code: bad input; the sandbox: not


class BudgetTooSmall(EvolverError):
    """The budget cannot even pay for the seed's validation evaluation."""
