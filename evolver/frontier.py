"""Pareto frontiers over validation results and seeded parent selection.

Three views, chosen by the task (`instance`, `objective`, `hybrid`):
- instance: for each validation instance, the candidates tied for the best score there (GEPA's rule);
  candidates whose wins are all shared with other survivors are pruned as dominated; a survivor's sampling
  weight is the number of instances where it is best.
- objective: candidates not Pareto-dominated over the task's objectives (each max or min), weight 1 each.
- hybrid: the union of both, weights added.
A NaN or infinite score, or a missing value, counts as a failure: never best, dominated by any real value.
Pure functions over plain data; the randomness is a `random.Random` the caller seeds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import FAILED_STATUSES, FRONTIER_MODES, PASSING_STATUSES, PRIMARY_OBJECTIVE, one_of

__all__ = ["FAILED_STATUSES", "CandidateScores", "Frontier", "build_frontier", "rank_key", "scores_from_results"]


@dataclass(frozen=True)
class CandidateScores:
    """One candidate's validation results: score per instance, and each objective aggregated over them."""

    candidate: str
    per_instance: Mapping[str, float | None]
    objectives: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Frontier:
    mode: str
    members: tuple[str, ...]  # in the order the candidates were given (oldest first)
    weights: tuple[float, ...]
    best_on: Mapping[str, frozenset[str]] = field(default_factory=dict)  # instance -> candidates tied best

    def select(self, rng: random.Random) -> str:
        """A parent, with probability proportional to its weight."""
        if not self.members:
            raise ValueError("the frontier is empty: no candidate has a valid score yet")
        return rng.choices(self.members, weights=self.weights, k=1)[0]


def _value(x: float | None) -> float | None:
    """A usable number, or None for missing, NaN and infinities (failures)."""
    if x is None or isinstance(x, bool):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def best_per_instance(cands: Sequence[CandidateScores], instances: Sequence[str]) -> dict[str, frozenset[str]]:
    """Instance -> the candidates tied for its best valid score (instances nobody solved validly are left out)."""
    out: dict[str, frozenset[str]] = {}
    for inst in instances:
        scored = [(c.candidate, v) for c in cands if (v := _value(c.per_instance.get(inst))) is not None]
        if not scored:
            continue
        top = max(v for _, v in scored)
        out[inst] = frozenset(name for name, v in scored if v == top)
    return out


def _prune_dominated(order: Sequence[str], best_on: Mapping[str, frozenset[str]]) -> list[str]:
    """Drop candidates every one of whose wins is shared with another survivor (fewest wins dropped first,
    the newest first among equals). One pass suffices: dropping a candidate never makes a kept one dominated."""
    position = {c: i for i, c in enumerate(order)}
    fronts: dict[str, list[frozenset[str]]] = {}
    for s in best_on.values():
        for c in s:
            fronts.setdefault(c, []).append(s)
    alive = set(fronts)
    for c in sorted(alive, key=lambda x: (len(fronts[x]), -position.get(x, -1))):
        if all(any(o != c and o in alive for o in s) for s in fronts[c]):
            alive.discard(c)
    return [c for c in order if c in alive]


def informative(cands: Sequence[CandidateScores], best_on: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The instances that tell candidates apart: where not every candidate with a valid score ties for the best.
    An instance every policy solves alike carries no weight in parent sampling (else the seed stays a favourite
    for being "best" on them); when no instance tells them apart yet (the seed alone), all count."""
    scored = {i: sum(_value(c.per_instance.get(i)) is not None for c in cands) for i in best_on}
    telling = {i: s for i, s in best_on.items() if len(s) < scored[i]}
    return telling or dict(best_on)


def _dominates(a: Mapping[str, float | None], b: Mapping[str, float | None], directions: Mapping[str, str]) -> bool:
    better = False
    for name, direction in directions.items():
        va, vb = _value(a.get(name)), _value(b.get(name))
        if va is None and vb is None:
            continue
        if va is None:
            return False
        if vb is None:
            better = True
            continue
        if direction == "min":
            va, vb = -va, -vb
        if va < vb:
            return False
        if va > vb:
            better = True
    return better


def objective_front(cands: Sequence[CandidateScores], directions: Mapping[str, str]) -> list[str]:
    """Candidates with a valid primary objective (the first) that no other candidate Pareto-dominates: a
    candidate whose primary score failed is never on the front, however fast or cheap it is."""
    primary = next(iter(directions), None)
    valid = [c for c in cands if primary is not None and _value(c.objectives.get(primary)) is not None]
    return [c.candidate for c in valid
            if not any(o is not c and _dominates(o.objectives, c.objectives, directions) for o in valid)]


def build_frontier(cands: Sequence[CandidateScores], instances: Sequence[str], directions: Mapping[str, str],
                   mode: str = "instance") -> Frontier:
    if mode not in FRONTIER_MODES:
        raise ValueError(f"frontier mode: expected {one_of(FRONTIER_MODES)}, found {mode!r}")
    order = [c.candidate for c in cands]
    best_on = best_per_instance(cands, instances)
    weight: dict[str, float] = {}
    if mode in ("instance", "hybrid"):
        telling = informative(cands, best_on)
        for c in _prune_dominated(order, telling):
            weight[c] = float(sum(c in s for s in telling.values()))
    if mode in ("objective", "hybrid"):
        for c in objective_front(cands, directions):
            weight[c] = weight.get(c, 0.0) + 1.0
    members = tuple(c for c in order if c in weight)
    return Frontier(mode=mode, members=members, weights=tuple(weight[c] for c in members), best_on=best_on)


def scores_from_results(candidate: str, results: Sequence[Any], directions: Mapping[str, str]) -> CandidateScores:
    """A candidate's validation results (objects with instance, status, score, objectives) as frontier input.

    `score` is the mean over all instances, failures counting 0; any other objective is the mean over the
    instances only when none failed, else missing: a candidate must not reach the objective front by being
    fast at failing."""
    # A skipped test (pytest tasks) measured nothing, and failed nothing either.
    all_ok = all(r.status in PASSING_STATUSES for r in results)
    mean_score = sum(r.score for r in results) / len(results) if results else 0.0
    objectives: dict[str, float | None] = {}
    for name in directions:
        vals = [v for r in results if r.status == "ok" and (v := r.objectives.get(name)) is not None]
        mean = sum(vals) / len(vals) if all_ok and vals else None
        objectives[name] = mean_score if name == PRIMARY_OBJECTIVE else mean
    per = {r.instance: (r.score if r.status not in FAILED_STATUSES else None) for r in results}
    return CandidateScores(candidate, per, objectives)


def rank_key(objectives: Mapping[str, float | None], directions: Mapping[str, str]) -> tuple[float, ...]:
    """Order of "best": the score, then the task's other objectives in their declared order and direction, so
    that among candidates that all pass (a pytest task) the faster one is best, not the oldest."""
    key = []
    for name, direction in {PRIMARY_OBJECTIVE: "max", **directions}.items():
        value = objectives.get(name)
        if value is None or not math.isfinite(value):
            key.append(float("-inf"))
        else:
            key.append(value if direction == "max" else -value)
    return tuple(key)
