"""Staged validation (racing): an accepted child is validated in stages of growing size, and stops as soon as
it breaks a gate or can no longer matter.

"Can no longer matter" is decided after each stage but the last, at a stated confidence (as in F-race and
successive halving): the child beats the frontier's best score on none of the instances seen so far, and, for
every parent and every optimized objective, the one-sided upper confidence bound on the child's mean
difference over the whole validation split (Student's t with the finite-population correction for the
instances not yet seen) is below the parent's value beyond the objective's tolerance. The confidence is split
over the decision points (Bonferroni), so the chance of stopping a child that is in truth as good as its parent
stays below 1 - confidence over the whole race; at least `MIN_SAMPLE` instances are needed for a bound. A stopped
child is rejected (`raced`); it never joins the standings, so the frontier only ever holds candidates
validated on every instance: nothing is invented for the instances a stopped child skipped.

The bound assumes the differences are not ruled by rare large gains on instances not yet seen; a child whose
gain is on a few instances is usually best there, and a child best on an instance seen is never stopped.

The order: when the task has bounded gates, the instances some candidate of the run broke a gate on come
first, as a stage of their own when they are fewer than the first stage (a pytest suite runs the tests that
failed before first, and a failure among them stops it); then a random order drawn from the run's seed and the
proposal. Only the random part enters the bound.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from ..config import PRIMARY_OBJECTIVE, Defaults
from ..objectives import Objective, instance_value
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


MIN_SAMPLE = 5  # paired values a confidence bound needs


@dataclass(frozen=True)
class Race:
    """One child's validation plan: the instances in order, and where each stage ends."""

    order: tuple[str, ...]
    ends: tuple[int, ...]  # cumulative stage sizes; the last is len(order)
    forced: frozenset[str] = frozenset()  # put first for the gates, not drawn at random: not in the bound

    @property
    def looks(self) -> int:
        """Decision points of the confidence bound: after every stage but the last that holds sampled instances
        (a stage of the forced instances alone is a gate check only)."""
        return max(1, sum(end > len(self.forced) for end in self.ends[:-1]))

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


def plan_race(val_ids: Sequence[str], risky: Set[str], rng: random.Random, settings: RaceSettings) -> Race:
    """The order (the `risky` instances first: where some candidate broke a bounded gate) and the stages."""
    ids = list(val_ids)
    rng.shuffle(ids)
    first = [i for i in ids if i in risky]
    order = tuple(first + [i for i in ids if i not in risky])
    ends = settings.ends(len(order))
    if settings.enabled and first and len(first) < ends[0]:
        ends = (len(first), *ends)  # the instances that broke a gate before, alone: a breach there ends it soonest
    return Race(order, ends, frozenset(first))


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function (through the regularized incomplete beta function)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile, by bisection on `t_cdf` (exact to 1e-9)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return front * h / a


def upper_bound(diffs: Sequence[float], population: int, confidence: float) -> float | None:
    """One-sided upper confidence bound on the mean difference over `population` instances, from a sample of
    them (None below `MIN_SAMPLE` values: too few to say anything)."""
    k = len(diffs)
    if k < MIN_SAMPLE:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    fpc = math.sqrt(max(0.0, (population - k) / max(1, population - 1)))
    return mean + t_quantile(confidence, k - 1) * sd / math.sqrt(k) * fpc


def race_stop(child: Sequence[Any], parents: Sequence[Sequence[Any]], standings: Standings,
              specs: Mapping[str, Objective], race: Race, confidence: float) -> str | None:
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
    per_look = 1.0 - (1.0 - confidence) / race.looks
    population = len(race.order) - len(race.forced)
    sampled = [r for r in child if r.instance not in race.forced]
    lines = []
    for parent in parents:
        by_instance = {r.instance: r for r in parent}
        for spec in (o for o in specs.values() if o.role == "optimize"):
            sign = 1.0 if spec.direction == "max" else -1.0
            pairs = [(a, b) for r in sampled if r.instance in by_instance
                     and (a := _value(r, spec.name)) is not None and (b := _value(by_instance[r.instance],
                                                                                  spec.name)) is not None]
            bound = upper_bound([sign * (a - b) for a, b in pairs], population, per_look)
            reference = statistics.fmean(b for _, b in pairs) if pairs else 0.0
            if bound is None or bound >= -spec.tolerance * (abs(reference) or 1.0):
                return None
            mean = statistics.fmean(sign * (a - b) for a, b in pairs)
            lines.append(f"{spec.name} {mean:+.4g} vs a parent on average (upper bound {bound:+.4g} at "
                         f"{confidence:.0%} over {race.looks} looks)")
    if not lines:  # nothing was compared (no parent with results, nothing optimized): no reason to stop
        return None
    return (f"stopped after {len(child)} of {len(race.order)} validation instances: best on none of them, and "
            f"below every parent ({'; '.join(lines)})")


def _value(result: Any, name: str) -> float | None:
    # The score counts a failure as 0 (as the mean does); other objectives are compared where both have one.
    return float(result.score) if name == PRIMARY_OBJECTIVE else instance_value(result, name)
