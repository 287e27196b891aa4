"""What an iteration will try, before anyone proposes anything: a `Plan`.

A plan names the parents (one for a mutation, two for a merge, with their merge base), the instances the child
will be judged on, and the sum it must beat there. The engine makes one per iteration (a merge when one is due
and a pair is eligible, else a mutation), stores it with the proposal, and judges the child by it: one path for
every kind of proposal. A plan is rebuilt from its stored proposal row when `resume` finishes one a kill cut off.

Merges follow GEPA's schedule: every accepted mutation schedules one merge attempt, at most `max_merges`; the
merged child is judged on a stratified validation subsample against the better parent (at least equal is
enough), then validated in full.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..config import MERGE_KIND
from ..run_state import Standings
from ..store import MergeRow, ProposalRow
from .merge_schedule import MergePair, choose_pair, merges_due, stratified_subsample

MUTATION = "mutation"


@dataclass(frozen=True)
class Plan:
    kind: str  # mutation | merge
    parents: tuple[str, ...]  # the first is the one the changes apply to
    instances: tuple[str, ...]  # what the child is judged on
    split: str  # train (a mutation's minibatch) or val (a merge's subsample)
    baseline: float | None  # the sum to beat there (a mutation's is known once its parent is evaluated)
    at_least: bool  # equal to the baseline is enough
    base: str | None = None  # merges: the merge base
    wins: tuple[tuple[str, ...], ...] = ()  # merges: per parent, validation instances where it beats the other
    parent_sums: tuple[float, ...] = ()  # merges: each parent's sum on the subsample

    @property
    def is_merge(self) -> bool:
        return self.kind == MERGE_KIND

    @property
    def baseline_parent(self) -> str:
        """The parent the child is judged against: a mutation's parent, a merge's better parent there."""
        if self.is_merge and self.parent_sums:
            return self.parents[max(range(len(self.parent_sums)), key=lambda k: self.parent_sums[k])]
        return self.parents[0]

    def versus(self, child_sum: float, labels: Sequence[str]) -> str:
        """One line for the record: the child's sum against what it had to beat."""
        if self.is_merge and self.parent_sums:
            best = max(range(len(self.parent_sums)), key=lambda k: self.parent_sums[k])
            return (f"subsample sum {child_sum:.4g} vs {self.baseline or 0.0:.4g} of the better parent "
                    f"{labels[best]} on {len(self.instances)} validation instances ({', '.join(self.instances)})")
        return f"minibatch sum {child_sum:.4g} vs parent {self.baseline or 0.0:.4g}"


def mutation_plan(standings: Standings, train: Sequence[str], minibatch: int, at_least: bool,
                  rng: random.Random, known: Mapping[tuple[str, str], float] | None = None,
                  always: Sequence[str] = ()) -> Plan:
    """A parent drawn from the frontier and its minibatch: the `always` instances (a speed task's benchmarks)
    first, the rest of `minibatch` drawn to discriminate."""
    frontier = standings.frontier()
    parent = frontier.select(rng)
    in_train = set(train)
    fixed = [i for i in dict.fromkeys(always) if i in in_train]
    chosen = set(fixed)
    rest = [i for i in train if i not in chosen]
    batch = fixed + discriminating_minibatch(rest, max(0, minibatch - len(fixed)), parent, frontier.members,
                                             known or {}, rng)
    return Plan(MUTATION, (parent,), tuple(batch), "train", None, at_least)


def discriminating_minibatch(train: Sequence[str], size: int, parent: str, members: Sequence[str],
                             known: Mapping[tuple[str, str], float], rng: random.Random) -> list[str]:
    """A minibatch that can tell the child from its parent: one instance the parent is known to lose to another
    frontier member (when there is one), then instances drawn with weight 3 where the members' known scores
    differ, 2 where fewer than two are known yet, 1 where every member known ties (they rarely discriminate).
    `known`: (candidate, instance) -> stored score."""
    size = min(size, len(train))
    loses, weights = [], {}
    for i in train:
        scores = [known[(m, i)] for m in members if (m, i) in known]
        mine = known.get((parent, i))
        if mine is not None and any(x > mine for x in scores):
            loses.append(i)
        weights[i] = 2.0 if len(scores) < 2 else 3.0 if len(set(scores)) > 1 else 1.0
    batch = [rng.choice(loses)] if loses and size else []
    pool = [i for i in train if i not in batch]
    while len(batch) < size and pool:
        pick = rng.choices(pool, weights=[weights[i] for i in pool], k=1)[0]
        batch.append(pick)
        pool.remove(pick)
    return batch


def plan_of(row: ProposalRow, at_least: bool, merge: MergeRow | None = None) -> Plan:
    """The plan a stored proposal was made under (for finishing it after a kill)."""
    if row.kind == MERGE_KIND:
        sums = (merge.parent_a_score or 0.0, merge.parent_b_score or 0.0) if merge is not None else ()
        return Plan(MERGE_KIND, tuple(row.parents), tuple(row.minibatch), "val", row.parent_score, True,
                    base=merge.base if merge is not None else None, parent_sums=sums)
    return Plan(MUTATION, (row.parent_sha,), tuple(row.minibatch), "train", row.parent_score, at_least)


class MergePlanner:
    """When to merge and which pair: the schedule's state (attempts, pairs tried) and the caches that keep pair
    choice cheap (merge bases, hunk overlaps), rebuilt from the store on start."""

    def __init__(self, *, max_merges: int, subsample: int, parents: dict[str, tuple[str, ...]],
                 proposals: Sequence[ProposalRow], merges: Sequence[MergeRow],
                 merge_base: Callable[[str, str], str | None], overlap: Callable[[str, str, str], int]) -> None:
        self.max_merges, self.subsample = max_merges, subsample
        self.parents = parents  # sha -> its parents, every candidate of the run
        self._merge_base_of, self._overlap_of = merge_base, overlap
        # An attempt cut off before its merge was committed produced nothing: its pair may be tried again.
        lost = {p.id for p in proposals if p.kind == MERGE_KIND and p.child_sha is None and
                (p.status == "pending" or p.reason in ("interrupted", "llm_error"))}
        kept = [m for m in merges if m.proposal_id not in lost]
        self.attempts = len(kept)
        self.accepted_mutations = sum(p.kind != MERGE_KIND and p.status == "accepted" for p in proposals)
        self.tried_pairs = {frozenset((m.parent_a, m.parent_b)) for m in kept}
        self.tried_triples = {(frozenset((m.parent_a, m.parent_b)), m.base) for m in kept}
        self._bases: dict[frozenset[str], str | None] = {}
        self._overlaps: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def _merge_base(self, a: str, b: str) -> str | None:
        key = frozenset((a, b))
        if key not in self._bases:
            self._bases[key] = self._merge_base_of(a, b)
        return self._bases[key]

    def _overlap(self, a: str, b: str, base: str) -> int:
        key = (a, b, base)
        if key not in self._overlaps:
            self._overlaps[key] = self._overlap_of(a, b, base)
        return self._overlaps[key]

    def plan(self, standings: Standings, rng: random.Random) -> Plan | None:
        """A merge plan when one is due and a pair is eligible (the pair is claimed at once), else None."""
        with self._lock:
            if merges_due(self.accepted_mutations, self.attempts, self.max_merges) <= 0:
                return None
            members = [m for m in standings.frontier().members if m in standings]
            per = {m: standings.scores(m).per_instance for m in members}
            means = {m: standings.mean_score(m) for m in members}
            pair = choose_pair(members, per, means, standings.val_ids, self.parents, self._merge_base,
                               self._overlap, self.tried_pairs, self.tried_triples, rng)
            if pair is None:
                return None
            self.attempts += 1
            self.tried_pairs.add(frozenset((pair.a, pair.b)))
            self.tried_triples.add((frozenset((pair.a, pair.b)), pair.base))
        subsample = stratified_subsample(per[pair.a], per[pair.b], standings.val_ids, self.subsample, rng)
        sums = (standings.sum_on(pair.a, subsample), standings.sum_on(pair.b, subsample))
        return _merge_plan(pair, tuple(subsample), sums)

    def release(self, plan: Plan) -> None:
        """An attempt that says nothing about its pair (the LLM was down): not counted, the pair stays eligible."""
        with self._lock:
            pair = frozenset(plan.parents)
            self.attempts -= 1
            self.tried_pairs.discard(pair)
            self.tried_triples.discard((pair, plan.base or ""))

    def accepted(self, plan: Plan) -> None:
        if not plan.is_merge:
            with self._lock:
                self.accepted_mutations += 1


def _merge_plan(pair: MergePair, subsample: tuple[str, ...], sums: tuple[float, float]) -> Plan:
    return Plan(MERGE_KIND, (pair.a, pair.b), subsample, "val", max(sums), True, base=pair.base,
                wins=(pair.a_wins, pair.b_wins), parent_sums=sums)


def moved_instances(standings: Standings, a: str, b: str, base: str | None) -> tuple[str, ...]:
    """Validation instances where either parent's score differs from the base's (or from each other's when the
    base has no standing)."""
    per_a, per_b = standings.scores(a).per_instance, standings.scores(b).per_instance
    if base is not None and base in standings:
        per_base: Mapping[str, float | None] = standings.scores(base).per_instance
        return tuple(i for i in standings.val_ids if per_a.get(i) != per_base.get(i) or per_b.get(i) !=
                     per_base.get(i))
    return tuple(i for i in standings.val_ids if per_a.get(i) != per_b.get(i))
