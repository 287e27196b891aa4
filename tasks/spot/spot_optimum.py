"""The offline optimum of a scenario: the cheapest cost any sequence of decisions reaches, knowing the whole
trace in advance, under exactly the simulator's rules (preemption, restart overhead, forced on-demand).

Dynamic programming over ticks; a state is (instance type, restart overhead left, work done) with the least
cost reaching it. It stays exact and small because a state is dropped only when another one of the same tick
is at least as good in every respect (more work, less cost, and a running instance without overhead left
dominates an idle one: it can always be stopped for free), or when even finishing on spot at no overhead
could not beat the best complete run found so far (a baseline's cost to begin with).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from spot_sim import NONE, OD, PRICE_UNITS, SPOT, Scenario, State, begin_tick, step


def _pareto(states: dict[tuple[int, int, int], int]) -> dict[tuple[int, int, int], int]:
    """Keep, per (instance, overhead left), the states no other has both more work and less cost than; an
    idle state also yields to a running one without overhead left (same choices, plus continuing for free)."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (inst, over, work), cost in states.items():
        groups.setdefault((inst, over), []).append((work, cost))
    kept: dict[tuple[int, int, int], int] = {}
    runners: list[tuple[int, int]] = []  # (work, cost) of running instances with no overhead left
    for (inst, over), items in groups.items():
        items.sort(key=lambda wc: (-wc[0], wc[1]))
        best = None
        for work, cost in items:
            if best is None or cost < best:
                best = cost
                kept[(inst, over, work)] = cost
                if inst != NONE and over == 0:
                    runners.append((work, cost))
    if runners and (NONE, 0) in groups:
        runners.sort()  # by work; the cheapest runner with at least w work: a suffix minimum
        works = [w for w, _ in runners]
        cheapest = [c for _, c in runners]
        for i in range(len(cheapest) - 2, -1, -1):
            cheapest[i] = min(cheapest[i], cheapest[i + 1])
        for work, _cost in groups[(NONE, 0)]:
            i = bisect_left(works, work)
            key = (NONE, 0, work)
            if i < len(works) and key in kept and cheapest[i] <= kept[key]:
                del kept[key]
    return kept


def offline_optimum(sc: Scenario, upper_bound_units: int | None = None) -> int:
    """Least cost in cost units (see spot_sim) of finishing the job on this scenario."""
    best = upper_bound_units if upper_bound_units is not None else PRICE_UNITS[OD] * (sc.work_s + sc.overhead_s)
    spot_price = PRICE_UNITS[SPOT]
    frontier: dict[tuple[int, int, int], int] = {(NONE, 0, 0): 0}
    for tick in range(sc.ticks):
        if not frontier:
            break
        nxt: dict[tuple[int, int, int], int] = {}
        actions: Iterable[int] = (NONE, SPOT, OD) if sc.avail[tick] else (NONE, OD)
        for (inst, over, work), cost in frontier.items():
            state, _ = begin_tick(State(tick, work, inst, over, cost), sc)
            for action in actions:
                after, taken, _why = step(state, action, sc)
                if taken != action:
                    continue  # forced to on-demand: the same as choosing it, which is tried too
                if after.done_s is not None:
                    best = min(best, after.cost_units)
                    continue
                if after.cost_units + spot_price * (sc.work_s - after.work_s) >= best:
                    continue
                key = (after.instance, after.overhead_left_s, after.work_s)
                if after.cost_units < nxt.get(key, best):
                    nxt[key] = after.cost_units
        frontier = _pareto(nxt)
    return best
