"""The reflective evolution loop: plan -> propose -> check -> commit -> evaluate -> accept, one path for every
kind of proposal.

An iteration makes a `Plan` (a merge of two frontier candidates when one is due and a pair is eligible, else a
mutation of a parent sampled from the frontier), asks the plan's proposer for a `Proposal`, and then, whatever
proposed it: checks it (mutable files only, syntax, not a duplicate), commits the child (a two-parent commit
for a merge), evaluates it on the plan's instances, and accepts it when it beats the plan's baseline parent
by the acceptance rule and keeps the gates (evolver.objectives); an accepted child is validated in stages that
stop one which cannot matter (engine.racing), and joins the standings once validated in full. Every step is
written to the store (and the child to git) as it happens, so a kill -9 loses at most the step in flight and
`resume` finishes a committed child from its stored plan. Randomness is derived from (seed, iteration), so a
resumed run makes the same choices.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..errors import EvolverError
from ..evaluation import CandidateEvaluator, CandidateRef, InstanceResult
from ..evidence import condense
from ..hunks import overlapping_hunks
from ..lessons import LessonLog
from ..objectives import accept_rule_for, gate_failures, judge, regressed_gate
from ..proposers.base import MergeRecord, Proposal, Proposer
from ..repo import RunRepo, candidate_branch
from ..run_state import Standings, accepted_order, validation_ids
from ..store import ProposalRow, Store
from ..task import Task
from . import checks
from .budget import Budget, StopReason, Usage, budget_advice, stop_reason
from .context import ContextBuilder
from .faults import BudgetTooSmall, EvaluatorFault, evaluator_fault
from .knowledge import Knowledge
from .meter import Meter
from .outcomes import Outcomes
from .plans import MergePlanner, Plan, mutation_plan, plan_of
from .racing import RaceSettings, plan_race, race_stop
from .records import Event, LoopConfig, current_proposal
from .streaks import Streaks
from .workers import run_in_threads

# What `_attempt` returns for a merge that came out as one of its parents: `iterate` mutates instead (never a stop).
MERGE_GAVE_NOTHING = StopReason("nothing_new", "the merge reproduced a parent")
HOLD_RETRY_S = 0.2  # with iterations in flight, how long one whose calls cannot be held waits before it retries
WORKER_JOIN_S = 10.0  # how long Ctrl-C waits for iterations in flight before the run's resources are closed

__all__ = ["BudgetTooSmall", "Engine", "EvaluatorFault", "Event", "LoopConfig", "current_proposal"]


class Engine:
    def __init__(self, *, task: Task, run: str, repo: RunRepo, store: Store, evaluator: CandidateEvaluator,
                 proposer: Proposer, lessons: LessonLog, budget: Budget, config: LoopConfig,
                 on_event: Callable[[Event], None] | None = None, usd_spent: Callable[[], float] = lambda: 0.0,
                 merger: Proposer | None = None):
        self.task, self.run_name, self.repo, self.store = task, run, repo, store
        self.evaluator, self.proposer, self.lessons, self.merger = evaluator, proposer, lessons, merger
        self.budget, self.config, self.on_event = budget, config, on_event
        self.train = [i for i in (task.instances.train if task.instances else ())]
        if not self.train:
            raise EvolverError("an evolution run needs instances: a train split (and a val split to generalise)")
        self.val = validation_ids(task)
        self.race = RaceSettings.of(task.evolve, config.race, config.race_confidence)
        self.rule = accept_rule_for(task.objective_specs, config.accept or task.evolve.accept)
        # Calls promised to batches of a process that died (kill -9) were possibly made: they count as spent.
        self.recovered_evals = store.recover_reserved(run)
        row = store.run(run)
        assert row is not None, "create the run in the store first"
        # Views read the run's results under the key they were stored with: this evaluator's.
        store.update_run(run, config={**row.config, "eval_key": evaluator.cache_key})
        self.standings = Standings(self.val, task.objectives, config.frontier, task.optimized,
                                   task.objective_specs)
        candidates = store.candidates(run)
        self._trees: dict[str, str] = {c.sha: c.tree for c in candidates}  # commits never change
        # Trees of every candidate of the run -> its branch: a proposal recreating one is a duplicate.
        self._known: dict[str, str] = {c.tree: c.branch or c.sha[:12] for c in candidates}
        self._labels = {c.sha: (c.branch or c.sha[:10]).rsplit("/", 1)[-1] for c in candidates}
        # Every candidate's parents: one dict the merge planner and the context builder share (written here only).
        self._parents: dict[str, tuple[str, ...]] = {c.sha: c.parents for c in candidates}
        self.knowledge = Knowledge(task.objective_specs)  # for minibatch choice and the validation order
        self.planner = MergePlanner(
            max_merges=config.max_merges, subsample=config.merge_subsample, parents=self._parents,
            proposals=store.proposals(run), merges=store.merges(run), merge_base=repo.merge_base,
            overlap=self._overlap) if merger is not None and config.merge else None
        self.contexts = ContextBuilder(task, run, repo, store, lessons, self.standings, self.label, self._parents,
                                       config.tried_shown, evaluator.cache_key)
        self.streaks = Streaks()
        # Guards the engine's state (usage, standings, known trees) when several iterations run at once; LLM
        # calls and evaluations run outside it. The store and the repo are safe to use concurrently.
        self._lock = threading.RLock()
        self.meter = Meter(run=run, store=store, evaluator=evaluator, budget=budget, lock=self._lock,
                           usage=Usage(evals=row.evals_used, usd=row.usd_used, seconds=row.elapsed_s,
                                       iterations=row.iteration), usd_spent=usd_spent)
        self.outcomes = Outcomes(store=store, lessons=lessons, contexts=self.contexts, standings=self.standings,
                                 meter=self.meter, streaks=self.streaks, planner=self.planner, lock=self._lock,
                                 emit=self._emit, label=self.label)
        self._stopping: StopReason | None = None
        self._error: BaseException | None = None

    # -- helpers -----------------------------------------------------------------------------------------
    def label(self, sha: str) -> str:
        return self._labels.get(sha, sha[:10])

    def _overlap(self, a: str, b: str, base: str) -> int:
        # Over the mutable files only: a seed may hold large data files no mutation touches.
        files = [{p: d for p, d in self.repo.read_files(s).items() if self.task.is_mutable(p)} for s in (base, a, b)]
        return overlapping_hunks(*files)

    def _ref(self, sha: str) -> CandidateRef:
        tree = self._trees.get(sha)
        if tree is None:
            tree = self._trees[sha] = self.repo.tree_sha(sha)
        return CandidateRef(sha=sha, tree=tree, archive=lambda: self.repo.archive(sha))

    @property
    def usage(self) -> Usage:
        return self.meter.usage

    def save_progress(self) -> None:
        """Write the usage counters to the store (also called by the driver on Ctrl-C)."""
        with self._lock:
            self.meter.tick()

    def time_left(self) -> float | None:
        return self.meter.time_left()

    def stop(self, reason: StopReason) -> None:
        """Stop the run after the iterations in flight (the first reason given wins); thread-safe."""
        with self._lock:
            self._stopping = self._stopping or reason

    def _evaluate(self, sha: str, ids: Sequence[str], split: str, seed: bool = False) -> list[InstanceResult] | None:
        """Results, or None when the budget does not allow the evaluator calls this needs. A result the task's
        evaluator failed on (not the candidate) stops the run (`faults.evaluator_fault`)."""
        results = self.meter.evaluate(self._ref(sha), ids, split)
        if results is None:
            return None
        fault = evaluator_fault(results, split, seed)
        if fault is not None:
            raise fault
        with self._lock:
            self.knowledge.learn(sha, results)
            trouble = self.streaks.sandbox(results)
        if trouble is not None:
            self.stop(trouble)
        return results

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
            # The seed first: an evaluator or sandbox that cannot score it (or a candidate already accepted) stops
            # the run before any proposal.
            results = self._evaluate(sha, self.val, "val", seed=True)
            if results is None:
                missing = sum(self.evaluator.missing(self._ref(s), self.val) for s, _ in accepted)
                what = "the seed" if len(accepted) == 1 else f"the {len(accepted)} accepted candidates (seed included)"
                raise BudgetTooSmall(f"the budget does not cover validating {what} on the validation split: "
                                     f"{missing} more evaluator calls are needed ({self.usage.evals} used of "
                                     f"{self.budget.max_evals}); give a larger --budget-evals")
            self.standings.add(sha, results, order)
            broken = gate_failures(results, self.task.objective_specs) if order == 0 else []
            if broken:  # the seed: children are held only to what held before, and told so
                self._emit("warning", f"the seed breaks a gate on {len(broken)} validation instance(s) "
                                      f"({'; '.join(broken[:3])}): children must keep every gate the seed keeps")
        gated = [p.child_sha for p in self.store.proposals(self.run_name, status="rejected")
                 if p.reason == "gate" and p.child_sha]
        self.knowledge.load(self.store, self.evaluator.cache_key, {s: self._ref(s).tree for s, _ in accepted},
                            self.train)
        self.knowledge.load(self.store, self.evaluator.cache_key, {s: self._ref(s).tree for s in gated}, self.val)
        unfinished = self.store.proposals(self.run_name, status="pending") + [
            p for p in self.store.proposals(self.run_name, status="failed")
            if p.reason in ("budget", "sandbox_error") and p.child_sha]
        for p in sorted(unfinished, key=lambda p: p.id):
            self._finish_pending(p)
        self._teach_missing_lessons()

    def _teach_missing_lessons(self) -> None:
        """A kill between a proposal's outcome and its lesson line leaves a proposal the log does not know."""
        for lesson in self.contexts.untaught():
            self.lessons.append(lesson)

    def run(self) -> StopReason:
        """Iterate until a budget or stopping rule says stop (with `workers` iterations in flight); returns why."""
        run_in_threads(self._work, max(1, self.config.workers),
                       lambda: self.stop(StopReason("interrupted", "interrupted")), WORKER_JOIN_S)
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
                reason = stop_reason(self.budget, self.usage) or self.streaks.stop()
                if reason is None:  # an iteration that could not even evaluate a child is not started (nor counted)
                    short = self.meter.short(min(self.config.minibatch, len(self.train)) * self.task.repeats)
                    reason = StopReason("budget", short) if short else None
                self._stopping = reason
            if self._stopping is not None:
                return None
            self.meter.usage = replace(self.usage, iterations=self.usage.iterations + 1)
            return self.usage.iterations

    def _unclaim(self, why: StopReason | None, it: int, alone: bool) -> StopReason | None:
        """An iteration the budget stopped before it proposed anything is not counted (a resume of a spent run
        changes nothing), unless it stored a proposal already (`alone` false) or a later one was claimed since."""
        with self._lock:
            if alone and self.usage.iterations == it:
                self.meter.usage = replace(self.usage, iterations=it - 1)
        return why

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
        merged = False  # whether this iteration stored a merge proposal already
        if self.planner is not None and self.merger is not None:
            rng = random.Random(f"{self.config.seed}:{it}:merge")
            with self._lock:
                plan = self.planner.plan(self.standings, rng)
            if plan is not None:
                outcome = self._attempt(it, plan, self.merger, rng)
                if outcome is not MERGE_GAVE_NOTHING:
                    return outcome
                merged = True
                # The merge would have reproduced a parent (or changed nothing): it spent no evaluator call, and
                # the iteration is not lost to it: it mutates as well.
        rng = random.Random(f"{self.config.seed}:{it}")
        with self._lock:
            plan = mutation_plan(self.standings, self.train, self.config.minibatch, self.rule == "ties", rng,
                                 self.knowledge.scores, self.task.evolve.always_in_minibatch)
        return self._attempt(it, plan, self.proposer, rng, alone=not merged)

    def _attempt(self, it: int, plan: Plan, proposer: Proposer, rng: random.Random,
                 alone: bool = True) -> StopReason | None:
        """Store the plan, ask its proposer, then land the proposal."""
        # No proposal (and no paid LLM call) that the budget could not evaluate: the child's calls, and for a
        # mutation the first stage of its validation, are held (in memory) before its parent is evaluated and
        # until the child's evaluation reserves them, so iterations in flight cannot all pass the check.
        held = self.meter.hold((len(plan.instances) + self.race.ends(len(self.val))[0]) * self.task.repeats)
        if isinstance(held, StopReason):
            if self.meter.reserved:  # other iterations in flight hold calls: they may give some back
                time.sleep(HOLD_RETRY_S)
                return self._unclaim(None, it, alone)
            return self._unclaim(held, it, alone)
        try:
            parent_results: list[InstanceResult] = []
            if not plan.is_merge:
                got = self._evaluate(plan.parents[0], plan.instances, plan.split)
                if got is None:
                    return self._unclaim(self.meter.budget_stop(len(plan.instances)), it, alone)
                parent_results = got
                if any(r.status == "sandbox_error" for r in parent_results):
                    return None  # no proposal on an unmeasured baseline (the streak stops a broken sandbox's run)
                plan = replace(plan, baseline=sum(r.score for r in parent_results))
            pid = self.store.add_proposal(self.run_name, it, plan.kind, plan.parents[0], list(plan.instances),
                                          plan.baseline, parents=plan.parents, proposer=proposer.name)
            try:
                return self._propose_and_land(pid, it, plan, proposer, rng, parent_results, held)
            except EvaluatorFault as exc:
                self.store.update_proposal(pid, status="failed", reason="evaluator_error", detail=str(exc)[:4000])
                self.outcomes.lesson(self._proposal(pid), "failed", "evaluator_error", None)
                raise
        finally:
            self.meter.release(held)

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
            self.outcomes.failed(self._proposal(pid), plan, failure or "failed", detail)
            return MERGE_GAVE_NOTHING if plan.is_merge and failure in ("duplicate", "noop") else None
        subject = (proposal.change.splitlines()[0][:72] if proposal.change else plan.kind)
        body = f"Diagnosis: {proposal.diagnosis}\nProposer: {made_by}" if proposal.diagnosis else f"Proposer: {made_by}"
        child = self.repo.commit_tree(tree, plan.parents, subject=subject, kind=plan.kind, body=body,
                                      run=self.run_name)
        self._trees[child] = tree
        # The candidate row before the branch: a kill between them leaves a row that resume adopts (and makes
        # the branch of), never a branch nothing knows about.
        self.store.record_candidate(self.run_name, child, tree, branch, plan.parents, plan.kind)
        self.repo.set_branch(branch, child)
        with self._lock:
            self._labels[child] = f"c{pid}"
            self._parents[child] = plan.parents
        self.store.update_proposal(pid, child_sha=child, branch=branch, diagnosis=proposal.diagnosis,
                                   change=proposal.change, operator=proposal.operator,
                                   files=sorted(proposal.changes), failure_kinds=failure_kinds)
        if held is not None:
            self.meter.release(held)  # the child's evaluation reserves its calls itself
        return self._judge(self._proposal(pid), plan, list(parent_results) or None)

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
                self.outcomes.lesson(self._proposal(p.id), "failed", "interrupted", None)
                return
            self.repo.set_branch(branch, orphan.sha)  # it may have been killed before the branch was made
            self.store.update_proposal(p.id, child_sha=orphan.sha, branch=branch)
            p = replace(p, child_sha=orphan.sha, branch=branch)
            self._labels[orphan.sha] = f"c{p.id}"
        self._judge(p, plan_of(p, self.rule == "ties", self.store.merge(p.id)))

    def _judgeable(self, p: ProposalRow, sha: str, plan: Plan, unaffordable: str
                   ) -> list[InstanceResult] | StopReason | None:
        """`sha`'s results on the plan's instances, or, when there are none to judge by, the outcome recorded for
        the proposal: a budget stop (returned) or a sandbox failure (None)."""
        results = self._evaluate(sha, plan.instances, plan.split)
        if results is None:
            why = self.meter.budget_stop(len(plan.instances))
            self.outcomes.out_of_budget(p, f"{unaffordable}: {why.message}")
            return why
        if any(r.status == "sandbox_error" for r in results):
            self.outcomes.not_judged(p, results)
            return None
        return results

    def _judge(self, p: ProposalRow, plan: Plan, baseline: list[InstanceResult] | None = None
               ) -> StopReason | None:
        """Judge a committed child on its plan's instances against its baseline parent (by the acceptance
        rule and the gates), then validate an accepted one in stages. `baseline`: the parent's results there,
        when the caller has them."""
        assert p.child_sha is not None
        child_results = self._judgeable(p, p.child_sha, plan, "not evaluated")
        if not isinstance(child_results, list):
            return child_results
        if baseline is None:
            # Stored (a merge's parents were validated; a mutation's parent was evaluated on its minibatch before
            # a kill): no evaluator call, unless the evaluator changed since.
            found = self._judgeable(p, plan.baseline_parent, plan, "its parent could not be evaluated")
            if not isinstance(found, list):
                return found
            baseline = found
        if plan.baseline is None:
            plan = replace(plan, baseline=sum(r.score for r in baseline))
        verdict = judge(baseline, child_results, self.task.objective_specs, self.rule, plan.at_least)
        child_sum = sum(r.score for r in child_results)
        versus = plan.versus(child_sum, [self.label(s) for s in plan.parents])
        if verdict.detail and (self.rule == "pareto" or verdict.reason == "gate"):
            versus = f"{versus} ({verdict.detail})"
        if not verdict.accepted:
            detail = condense(child_results, budget=1500, include_ok_feedback=False) \
                if verdict.reason == "crashed" else versus
            self.outcomes.reject(p, plan, verdict.reason, detail, child_sum)
            return None
        return self._validate(p, plan, child_sum, versus)

    def _validate(self, p: ProposalRow, plan: Plan, child_sum: float, versus: str) -> StopReason | None:
        """Validate in stages (engine.racing): a gate breach or a child that can no longer matter stops it."""
        assert p.child_sha is not None
        with self._lock:
            rng = random.Random(f"{self.config.seed}:race:{p.id}")
            race = plan_race(self.val, self.knowledge.gate_broken, rng, self.race)
            parents = [self.standings.results(s) for s in plan.parents if s in self.standings]
        seen: list[InstanceResult] = []
        for k, stage in enumerate(race.stages()):
            got = self._evaluate(p.child_sha, stage, "val")
            if got is None:
                why = self.meter.budget_stop(len(stage) * self.task.repeats)
                self.outcomes.out_of_budget(p, f"accepted on the {versus}; validation stopped after {len(seen)} "
                                               f"of {len(self.val)} instances: {why.message}", child_sum)
                return why
            if any(r.status == "sandbox_error" for r in got):
                self.outcomes.not_judged(p, got)
                return None
            seen.extend(got)
            last = k == len(race.ends) - 1
            with self._lock:
                breach = regressed_gate(seen, parents, self.task.objective_specs, last)
                raced = None if breach or last else race_stop(seen, parents, self.standings,
                                                              self.task.objective_specs, race, self.race.confidence)
            if breach or raced:
                self.outcomes.reject(p, plan, "gate" if breach else "raced", f"accepted on the {versus}; "
                                     f"{breach or raced}", child_sum)
                return None
        by_id = {r.instance: r for r in seen}
        with self._lock:
            self.outcomes.accept(p, plan, [by_id[i] for i in self.val], child_sum, versus)
        return None
