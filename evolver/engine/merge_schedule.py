"""When to merge and which two candidates: pure functions over the frontier, the ancestry and what was tried.

When (GEPA's schedule): every accepted mutation schedules one merge attempt, at most `max_merges` in a run;
an attempt is made at the next iteration that finds an eligible pair (until then, iterations mutate).
Which pair: two frontier members, neither an ancestor of the other, with a common ancestor; preferred when
their diffs against the merge base touch different hunks, then when their per-instance wins complement each
other (each best where the other is not); never a pair, or a (pair, base) triple, tried before.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MergePair:
    a: str  # the merge commit's first parent: the better of the two by mean validation score
    b: str
    base: str
    a_wins: tuple[str, ...]  # validation instances where a scores higher than b
    b_wins: tuple[str, ...]
    overlapping_hunks: int  # hunks of a's diff against the base that touch hunks of b's


def merges_due(accepted_mutations: int, attempts: int, max_merges: int) -> int:
    """Merge attempts owed: one per accepted mutation, at most max_merges over the run."""
    return max(0, min(accepted_mutations, max_merges) - attempts)


def ancestors(sha: str, parents: Mapping[str, Sequence[str]]) -> set[str]:
    """Every commit reachable from `sha` through its parents (itself excluded)."""
    seen: set[str] = set()
    stack = list(parents.get(sha, ()))
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(parents.get(p, ()))
    return seen


def wins(a: Mapping[str, float | None], b: Mapping[str, float | None], instances: Sequence[str]) -> tuple[str, ...]:
    """Instances where a's score beats b's (a failure, None, never beats anything)."""
    out = []
    for i in instances:
        va, vb = a.get(i), b.get(i)
        if va is not None and (vb is None or va > vb):
            out.append(i)
    return tuple(out)


def choose_pair(members: Sequence[str], per_instance: Mapping[str, Mapping[str, float | None]],
                means: Mapping[str, float], instances: Sequence[str], parents: Mapping[str, Sequence[str]],
                merge_base: Callable[[str, str], str | None], overlap: Callable[[str, str, str], int],
                tried_pairs: Collection[frozenset[str]], tried_triples: Collection[tuple[frozenset[str], str]],
                rng: random.Random) -> MergePair | None:
    """The preferred eligible pair of frontier members, or None when no pair may be merged."""
    lineage = {m: ancestors(m, parents) for m in members}
    options: list[tuple[tuple, MergePair]] = []
    for i, x in enumerate(members):
        for y in members[i + 1:]:
            key = frozenset((x, y))
            if key in tried_pairs or x in lineage[y] or y in lineage[x] or not (lineage[x] & lineage[y]):
                continue
            base = merge_base(x, y)
            if base is None or (key, base) in tried_triples:
                continue
            a, b = (x, y) if means.get(x, 0.0) >= means.get(y, 0.0) else (y, x)
            a_wins = wins(per_instance[a], per_instance[b], instances)
            b_wins = wins(per_instance[b], per_instance[a], instances)
            pair = MergePair(a, b, base, a_wins, b_wins, overlap(a, b, base))
            complement = min(len(a_wins), len(b_wins))
            rank = (pair.overlapping_hunks == 0, complement > 0, complement, -pair.overlapping_hunks,
                    len(a_wins) + len(b_wins), rng.random())
            options.append((rank, pair))
    if not options:
        return None
    return max(options, key=lambda o: o[0])[1]


def stratified_subsample(a: Mapping[str, float | None], b: Mapping[str, float | None], instances: Sequence[str],
                         size: int, rng: random.Random) -> list[str]:
    """Up to `size` validation instances, alternating between those where a is better and those where b is
    (GEPA's rule: the merge must keep both parents' wins), topped up with instances where they tie."""
    a_better = list(wins(a, b, instances))
    b_better = list(wins(b, a, instances))
    ties = [i for i in instances if i not in a_better and i not in b_better]
    for group in (a_better, b_better, ties):
        rng.shuffle(group)
    picked: list[str] = []
    while len(picked) < size and (a_better or b_better):
        for group in (a_better, b_better):
            if group and len(picked) < size:
                picked.append(group.pop())
    picked += ties[: max(0, size - len(picked))]
    return sorted(picked, key=list(instances).index)
