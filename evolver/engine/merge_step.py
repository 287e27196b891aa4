"""The merge iteration of the engine: pick a pair, merge it, commit a two-parent merge commit, judge it.

Mixed into `Engine` (it uses the engine's evaluation, budget, lock and store helpers), so a merge goes through
the same evaluator-call reservations, USD accounting and per-run lock as a mutation. Acceptance is GEPA's rule:
the merged candidate is evaluated on a stratified subsample of validation instances where the parents differ
and accepted when its sum there is at least the better parent's; then it is evaluated on the whole validation
split (the subsample's results are reused from the cache). Each step is stored as it happens: a run killed
mid-merge resumes by judging the committed merge, or records the attempt as interrupted.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..lessons import LessonLog, relevant
from ..proposers.merge import MergeOutcome, Merger, MergeRequest, ParentSummary, overlapping_hunks
from ..repo import RunRepo, candidate_branch
from ..store import ProposalRow, Store
from ..task import Task
from .frontier import FAILED_STATUSES, CandidateScores, Frontier
from .merge_schedule import MergePair, ancestors, choose_pair, merges_due, stratified_subsample

if TYPE_CHECKING:
    from .loop import LoopConfig

NO_MERGE = "no merge"  # returned by _try_merge when no attempt was made: the iteration mutates instead
REFLECTIONS_SHOWN = 6


class MergeSteps:
    """Merge attempts of a run. Needs the attributes and helpers `Engine` defines."""

    task: Task
    run_name: str
    repo: RunRepo
    store: Store
    lessons: LessonLog
    merger: Merger | None
    config: LoopConfig
    val: list[str]
    val_scores: dict[str, CandidateScores]
    _known: dict[str, str]
    _trees: dict[str, str]
    _lock: threading.RLock

    def _init_merges(self) -> None:
        proposals = self.store.proposals(self.run_name)
        # An attempt cut off before its merge was committed produced nothing: its pair may be tried again.
        lost = {p.id for p in proposals if p.kind == "merge" and p.child_sha is None and
                (p.status == "pending" or p.reason in ("interrupted", "llm_error"))}
        merges = [m for m in self.store.merges(self.run_name) if m.proposal_id not in lost]
        self._merge_attempts = len(merges)
        self._accepted_mutations = sum(p.kind != "merge" and p.status == "accepted" for p in proposals)
        self._tried_pairs = {frozenset((m.parent_a, m.parent_b)) for m in merges}
        self._tried_triples = {(frozenset((m.parent_a, m.parent_b)), m.base) for m in merges}
        self._parents: dict[str, tuple[str, ...]] = {c.sha: c.parents for c in self.store.candidates(self.run_name)}
        self._overlaps: dict[tuple[str, str, str], int] = {}
        self._bases: dict[frozenset[str], str | None] = {}

    if TYPE_CHECKING:  # provided by Engine
        def frontier(self) -> Frontier: ...
        def _evaluate(self, sha: str, ids: Sequence[str], split: str) -> Any: ...
        def _budget_stop(self, needed: int) -> str: ...
        def _emit(self, kind: str, message: str) -> None: ...
        def _accept(self, p: ProposalRow, val_results: Any, child_sum: float, parent_sum: float,
                    label: str = "minibatch") -> None: ...
        def _lesson(self, p: ProposalRow, outcome: str, reason: str, delta: float | None) -> None: ...
        def save_progress(self) -> None: ...
        def _no_improvement(self) -> None: ...
        def _count_failure_locked(self, reason: str) -> None: ...

    # -- helpers -----------------------------------------------------------------------------------------
    def _label(self, sha: str) -> str:
        cand = self.store.candidate(sha)
        return cand.branch.rsplit("/", 1)[-1] if cand and cand.branch else sha[:10]

    # Both run under the engine's lock (the pair is chosen and claimed at once), once per pair of the frontier:
    # cached, and over the mutable files only (a seed may hold large data files no mutation touches).
    def _overlap(self, a: str, b: str, base: str) -> int:
        key = (a, b, base)
        if key not in self._overlaps:
            files = [{p: d for p, d in self.repo.read_files(s).items() if self.task.is_mutable(p)}
                     for s in (base, a, b)]
            self._overlaps[key] = overlapping_hunks(*files)
        return self._overlaps[key]

    def _merge_base(self, a: str, b: str) -> str | None:
        key = frozenset((a, b))
        if key not in self._bases:
            self._bases[key] = self.repo.merge_base(a, b)
        return self._bases[key]

    def _sum(self, sha: str, ids: Sequence[str]) -> float:
        per = self.val_scores[sha].per_instance
        return sum(per.get(i) or 0.0 for i in ids)

    def _request(self, pair: MergePair, changed: Sequence[str]) -> MergeRequest:
        per_a, per_b = self.val_scores[pair.a].per_instance, self.val_scores[pair.b].per_instance
        base = self.val_scores.get(pair.base)
        if base is not None:
            moved = tuple(i for i in self.val
                          if per_a.get(i) != base.per_instance.get(i) or per_b.get(i) != base.per_instance.get(i))
        else:
            moved = tuple(i for i in self.val if per_a.get(i) != per_b.get(i))
        since_base = ancestors(pair.base, self._parents) | {pair.base}

        def summary(sha: str, own_wins: tuple[str, ...]) -> ParentSummary:
            lineage = [s for s in [sha, *ancestors(sha, self._parents)] if s not in since_base]
            notes = []
            for s in lineage:
                for p in self.store.proposals(self.run_name, child_sha=s):
                    if p.diagnosis or p.change:
                        notes.append(f"{self._label(s)}: {p.diagnosis} | {p.change}"[:400])
            return ParentSummary(self._label(sha), sha, own_wins, dict(self.val_scores[sha].objectives),
                                 self._sum(sha, moved), tuple(notes[:REFLECTIONS_SHOWN]))

        lessons = relevant(self.lessons.load(self.task.name), changed, ())
        return MergeRequest(self.task, summary(pair.a, pair.a_wins), summary(pair.b, pair.b_wins),
                            self._label(pair.base), moved, lessons)

    # -- the attempt -------------------------------------------------------------------------------------
    def _try_merge(self, it: int) -> str | None:
        """A merge attempt when one is due and a pair is eligible (its outcome, like `iterate`), else NO_MERGE."""
        if self.merger is None or not self.config.merge:
            return NO_MERGE
        rng = random.Random(f"{self.config.seed}:{it}:merge")
        with self._lock:  # the pair is claimed at once: two workers never try the same pair
            if merges_due(self._accepted_mutations, self._merge_attempts, self.config.max_merges) <= 0:
                return NO_MERGE
            members = [m for m in self.frontier().members if m in self.val_scores]
            per = {m: self.val_scores[m].per_instance for m in members}
            means = {m: self.val_scores[m].objectives.get("score") or 0.0 for m in members}
            pair = choose_pair(members, per, means, self.val, self._parents, self._merge_base, self._overlap,
                               self._tried_pairs, self._tried_triples, rng)
            if pair is None:
                return NO_MERGE
            self._merge_attempts += 1
            self._tried_pairs.add(frozenset((pair.a, pair.b)))
            self._tried_triples.add((frozenset((pair.a, pair.b)), pair.base))
        subsample = stratified_subsample(per[pair.a], per[pair.b], self.val, self.config.merge_subsample, rng)
        a_sum, b_sum = self._sum(pair.a, subsample), self._sum(pair.b, subsample)
        pid = self.store.add_proposal(self.run_name, it, "merge", pair.a, subsample, max(a_sum, b_sum))
        self.store.add_merge(pid, self.run_name, pair.a, pair.b, pair.base, a_sum, b_sum)
        la, lb, lbase = self._label(pair.a), self._label(pair.b), self._label(pair.base)
        files = {s: self.repo.read_files(s) for s in (pair.base, pair.a, pair.b)}
        changed = sorted({p for s in (pair.a, pair.b) for p, d in files[s].items() if files[pair.base].get(p) != d})
        try:
            outcome = self.merger.merge(files[pair.base], files[pair.a], files[pair.b], self._request(pair, changed))
        except (RuntimeError, ValueError, RecursionError, OSError) as exc:
            # Recorded as this pair's failed attempt: raised, it would stop the run, and resume would pick the
            # same pair again and stop again.
            outcome = MergeOutcome(resolution="failed", failure="merge_error", detail=f"{type(exc).__name__}: {exc}")
        self.save_progress()
        title = f"merge of {la} and {lb} (base {lbase})"
        how = f"{outcome.conflicts} conflict(s), resolution {outcome.resolution}" if outcome.conflicts else "clean"
        self.store.update_merge(pid, conflicts=outcome.conflicts, resolution=outcome.resolution,
                                contributions=list(outcome.contributions))
        not_mutable = sorted(p for p in outcome.changes if not self.task.is_mutable(p))
        failure, detail = outcome.failure, outcome.detail
        if failure is None and not_mutable:
            failure, detail = "not_mutable", f"the merge changes files that are not mutable: {', '.join(not_mutable)}"
        tree = branch = owner = None
        if failure is None:
            tree = self.repo.tree_of_changes(pair.a, dict(outcome.changes))
            branch = candidate_branch(self.run_name, pid)
            with self._lock:
                owner = self._known.get(tree)
                if owner is None:
                    self._known[tree] = branch
            if owner is not None:
                failure, detail = "duplicate", f"the same files as {owner}, already evaluated"
        if failure is not None or tree is None or branch is None:
            self.store.update_proposal(pid, status="failed", reason=failure or "failed", detail=detail[:4000],
                                       change=f"{title}: {how}", files=changed)
            row = self.store.proposals(self.run_name, parent_sha=pair.a)
            self._lesson(next(p for p in row if p.id == pid), "failed", failure or "failed", None)
            if failure == "llm_error":
                # An LLM outage says nothing about the pair: it stays eligible and the attempt is not counted,
                # but the failure counts towards the streak that stops a run whose LLM keeps failing.
                with self._lock:
                    self._merge_attempts -= 1
                    self._tried_pairs.discard(frozenset((pair.a, pair.b)))
                    self._tried_triples.discard((frozenset((pair.a, pair.b)), pair.base))
                    self._count_failure_locked("llm_error")
            else:
                self._no_improvement()
            self._emit("iteration", f"{title} failed ({failure}): {detail.splitlines()[0][:100] if detail else ''}")
            return None
        child = self.repo.commit_tree(tree, (pair.a, pair.b), subject=title, kind="merge",
                                      body=f"{how}.", run=self.run_name)
        self._trees[child] = tree
        self.repo.set_branch(branch, child)
        self.store.record_candidate(self.run_name, child, tree, branch, (pair.a, pair.b), "merge")
        with self._lock:
            self._parents[child] = (pair.a, pair.b)
        self.store.update_proposal(pid, child_sha=child, branch=branch, change=f"{title}: {how}",
                                   diagnosis=_wins_line(la, pair.a_wins, lb, pair.b_wins),
                                   files=sorted(outcome.changes))
        return self._decide_merge(self.store.proposals(self.run_name, child_sha=child)[-1])

    def _finish_merge(self, p: ProposalRow) -> None:
        """A merge attempt interrupted by a kill: judge its committed merge, or record that it never got one."""
        if p.child_sha is None:
            self.store.update_proposal(p.id, status="failed", reason="interrupted",
                                       detail="the run stopped before the merge was committed")
            return
        self._decide_merge(p)

    def _decide_merge(self, p: ProposalRow) -> str | None:
        assert p.child_sha is not None
        merge = next(m for m in self.store.merges(self.run_name) if m.proposal_id == p.id)
        results = self._evaluate(p.child_sha, p.minibatch, "val")
        if results is None:
            return self._budget_stop(len(p.minibatch))
        a_sum, b_sum = self._sum(merge.parent_a, p.minibatch), self._sum(merge.parent_b, p.minibatch)
        better, better_label = max((a_sum, self._label(merge.parent_a)), (b_sum, self._label(merge.parent_b)))
        child_sum = sum(r.score for r in results)
        crashed = all(r.status in FAILED_STATUSES for r in results)
        versus = (f"subsample sum {child_sum:.4g} vs {better:.4g} of the better parent {better_label} on "
                  f"{len(p.minibatch)} validation instances ({', '.join(p.minibatch)})")
        if crashed or child_sum < better:
            reason = "crashed" if crashed else "worse"
            self.store.update_proposal(p.id, status="rejected", reason=reason, detail=versus,
                                       child_score=child_sum)
            self._lesson(p, "rejected", reason, child_sum - better)
            self._no_improvement()
            self._emit("iteration", f"{self._label(p.child_sha)} merge rejected ({reason}): {versus}")
            return None
        val_results = self._evaluate(p.child_sha, self.val, "val")
        if val_results is None:  # left pending: `resume` with a larger budget finishes it
            self.store.update_proposal(p.id, child_score=child_sum, detail=f"accepted on the {versus}; "
                                       "full validation not run: budget")
            return self._budget_stop(len(self.val))
        with self._lock:
            self._accept(p, val_results, child_sum, better, label="subsample")
        return None


def _wins_line(la: str, a_wins: Sequence[str], lb: str, b_wins: Sequence[str]) -> str:
    def names(ids: Sequence[str]) -> str:
        return ", ".join(ids[:8]) + (f" (+{len(ids) - 8})" if len(ids) > 8 else "") if ids else "none"

    return f"{la} is better on {names(a_wins)}; {lb} on {names(b_wins)}"
