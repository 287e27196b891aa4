"""Staged validation (racing): an accepted child is validated in stages of growing size, and stops as soon as
it breaks a gate or can no longer matter.

"Can no longer matter" is decided after each stage but the last, at a stated confidence (as in F-race and
successive halving): the child beats the frontier's best score on none of the instances seen so far, and, for
every parent and every optimized objective, the one-sided upper confidence bound on the child's mean
difference over the whole validation split (a t bound with the finite-population correction for the instances
not yet seen) is below the parent's value beyond the objective's tolerance. A stopped child is rejected
(`raced`); it never joins the standings, so the frontier only ever holds candidates validated on every
instance: nothing is invented for the instances a stopped child skipped.

The order: when the task has bounded gates, the instances some accepted candidate failed a gate on come first
(a pytest suite runs the tests that failed before first, and the first failure stops it); then a random
order drawn from the run's seed and the proposal (a random sample is what the confidence bound assumes).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import PRIMARY_OBJECTIVE, Defaults
from ..objectives import Objective, gate_failures, instance_value
from ..run_state import Standings
from ..task import EvolveConfig


@dataclass(frozen=True)
class RaceSettings:
    enabled: bool = Defaults.race
    confidence: float = Defaults.race_confidence
    first: int = Defaults.race_first_stage

    @classmethod
    def of(cls, evolve: EvolveConfig, enabled: bool | None, confidence: float | None) -> RaceSettings:
        """The run's flags over the task's [evolve] settings."""
        return cls(evolve.race if enabled is None else enabled, confidence or evolve.race_confidence)

    def ends(self, n: int) -> tuple[int, ...]:
        return stage_ends(n, self.first, self.enabled)


@dataclass(frozen=True)
class Race:
    """One child's validation plan: the instances in order, and where each stage ends."""

    order: tuple[str, ...]
    ends: tuple[int, ...]  # cumulative stage sizes; the last is len(order)

    def stages(self) -> list[tuple[str, ...]]:
        starts = (0, *self.ends[:-1])
        return [self.order[a:b] for a, b in zip(starts, self.ends, strict=True)]


def stage_ends(n: int, first: int, enabled: bool = True) -> tuple[int, ...]:
    """Cumulative stage sizes: the first max(first, n/8), doubling, the last stage taking the rest once
    doubling would reach three quarters of the split. One stage when racing is off or when the first stage
    would be more than half the split."""
    size = max(first, math.ceil(n / 8))
    if not enabled or size > n / 2:  # too few instances for a stop to save much at little risk
        return (n,) if n else ()
    ends = []
    while size < n and size < 0.75 * n:
        ends.append(size)
        size *= 2
    return (*ends, n)


def plan_race(val_ids: Sequence[str], standings: Standings, specs: Mapping[str, Objective], rng: random.Random,
              settings: RaceSettings) -> Race:
    ids = list(val_ids)
    rng.shuffle(ids)
    risky: list[str] = []
    if any(o.role == "gate" and o.bounded for o in specs.values()):
        failed = {r.instance for sha in standings.candidates() for r in gate_breaking(standings.results(sha), specs)}
        risky = [i for i in ids if i in failed]
    order = tuple(risky + [i for i in ids if i not in set(risky)])
    return Race(order, settings.ends(len(order)))


def gate_breaking(results: Sequence[Any], specs: Mapping[str, Objective]) -> list[Any]:
    return [r for r in results if gate_failures([r], specs)]


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion around the normal; within 1% for df >= 3)."""
    z = statistics.NormalDist().inv_cdf(p)
    v = float(max(df, 1))
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def upper_bound(diffs: Sequence[float], population: int, confidence: float) -> float | None:
    """One-sided upper confidence bound on the mean difference over `population` instances, from a sample of
    them (None below 3 values: too few to say anything)."""
    k = len(diffs)
    if k < 3:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    fpc = math.sqrt(max(0.0, (population - k) / max(1, population - 1)))
    return mean + t_quantile(confidence, k - 1) * sd / math.sqrt(k) * fpc


def race_stop(child: Sequence[Any], parents: Sequence[Sequence[Any]], standings: Standings,
              specs: Mapping[str, Objective], population: int, confidence: float) -> str | None:
    """Why the child's validation stops after the instances seen so far (`child`), or None to go on (the gates
    are `objectives.regressed_gate`'s)."""
    frontier = standings.frontier()
    for r in child:
        best = frontier.best_on.get(r.instance)
        value = instance_value(r, PRIMARY_OBJECTIVE)
        top = max((v for c in best or () if (v := standings.scores(c).per_instance.get(r.instance)) is not None),
                  default=None)
        if value is not None and (top is None or value > top):
            return None  # best somewhere: it joins the frontier, and needs its full validation for that
    optimized = [o for o in specs.values() if o.role == "optimize"]
    lines = []
    for parent in parents:
        by_instance = {r.instance: r for r in parent}
        for spec in optimized:
            sign = 1.0 if spec.direction == "max" else -1.0
            pairs = [(a, b) for r in child if r.instance in by_instance
                     and (a := _value(r, spec.name)) is not None and (b := _value(by_instance[r.instance],
                                                                                  spec.name)) is not None]
            bound = upper_bound([sign * (a - b) for a, b in pairs], population, confidence)
            reference = statistics.fmean(b for _, b in pairs) if pairs else 0.0
            if bound is None or bound >= -spec.tolerance * (abs(reference) or 1.0):
                return None
            mean = statistics.fmean(sign * (a - b) for a, b in pairs)
            lines.append(f"{spec.name} {mean:+.4g} vs a parent on average (upper bound {bound:+.4g} at "
                         f"{confidence:.0%})")
    return (f"stopped after {len(child)} of {population} validation instances: best on none of them, and below "
            f"every parent ({'; '.join(lines)})")


def _value(result: Any, name: str) -> float | None:
    # The score counts a failure as 0 (as the mean does); other objectives are compared where both have one.
    return float(result.score) if name == PRIMARY_OBJECTIVE else instance_value(result, name)
