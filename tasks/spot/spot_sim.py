"""The spot-instance scheduling simulator (trusted side only: the server, the judge, the offline optimum).

A 48 h job must finish before its deadline. Time advances in 10-minute ticks; before each tick the policy
chooses `spot` (only when a spot instance is available in that tick), `on_demand` or `idle`. Starting an
instance, or switching its type, costs a restart overhead (time paid for but without progress); a spot
instance that becomes unavailable is preempted at the start of the tick. The environment forces on-demand in a
tick when any other choice would leave too little time to finish on on-demand afterwards, so a policy never
misses the deadline: a late policy pays for on-demand instead, as in the reference simulator of "Can't Be
Late" (Wu et al., NSDI'24).

Everything is integer seconds and integer cost units (price per hour x 10^4 x seconds), so the simulator, the
judge and the dynamic program agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

TICK_S = 600
WORK_S = 48 * 3600
DEADLINES_H = (52, 70, 92)
OVERHEADS_H = (0.02, 0.2, 0.4)
PRICE_OD = 3.06  # $ per hour
PRICE_SPOT = 0.9731
# Cost units: $ per hour x 10^4, times seconds. $ = units / (10^4 * 3600).
PRICE_UNITS = {1: 9731, 2: 30600}
UNITS_PER_DOLLAR = 10_000 * 3600

NONE, SPOT, OD = 0, 1, 2
ACTIONS = {"idle": NONE, "spot": SPOT, "on_demand": OD}
NAMES = {NONE: "none", SPOT: "spot", OD: "on_demand"}
MAX_TICKS = max(DEADLINES_H) * 3600 // TICK_S


@dataclass(frozen=True)
class Scenario:
    """One evaluation instance: an availability trace (one bool per tick), a deadline and an overhead."""

    avail: tuple[bool, ...]
    deadline_s: int
    overhead_s: int
    work_s: int = WORK_S  # 48 h; smaller only in tests that search every decision sequence

    @property
    def ticks(self) -> int:
        return self.deadline_s // TICK_S


def scenario(avail: Sequence[bool] | str, deadline_h: float, overhead_h: float, work_h: float = WORK_S / 3600
             ) -> Scenario:
    bits = tuple(c == "1" for c in avail) if isinstance(avail, str) else tuple(bool(a) for a in avail)
    deadline_s, overhead_s = round(deadline_h * 3600), round(overhead_h * 3600)
    if len(bits) * TICK_S < deadline_s:
        raise ValueError(f"trace of {len(bits)} ticks is shorter than the deadline ({deadline_h} h)")
    return Scenario(bits, deadline_s, overhead_s, round(work_h * 3600))


@dataclass(frozen=True)
class State:
    """Where the job stands at the start of a tick (after a preemption at that tick is applied)."""

    tick: int = 0
    work_s: int = 0
    instance: int = NONE  # what runs now: NONE, SPOT or OD
    overhead_left_s: int = 0  # restart overhead still to sit out on the running instance
    cost_units: int = 0
    done_s: int | None = None  # when the job finished (seconds from the start)


def begin_tick(state: State, sc: Scenario) -> tuple[State, bool]:
    """Apply a preemption at the start of the tick: (state, preempted)."""
    if state.instance == SPOT and not sc.avail[state.tick]:
        return State(state.tick, state.work_s, NONE, 0, state.cost_units, state.done_s), True
    return state, False


def _run(state: State, action: int, sc: Scenario) -> State:
    """One tick of `action` (already valid and allowed), without any forcing."""
    tick = state.tick
    if action == NONE:
        return State(tick + 1, state.work_s, NONE, 0, state.cost_units, None)
    over = sc.overhead_s if action != state.instance else state.overhead_left_s
    used_overhead = min(over, TICK_S)
    progress = TICK_S - used_overhead
    work = state.work_s + progress
    if work >= sc.work_s:  # done inside this tick: pay only for the part of it that was used
        used = used_overhead + sc.work_s - state.work_s
        cost = state.cost_units + PRICE_UNITS[action] * used
        return State(tick + 1, sc.work_s, action, 0, cost, tick * TICK_S + used)
    return State(tick + 1, work, action, over - used_overhead, state.cost_units + PRICE_UNITS[action] * TICK_S, None)


def _safe(after: State, sc: Scenario) -> bool:
    """After a tick that is not on-demand: can on-demand (with a fresh restart) still finish in time?"""
    if after.done_s is not None:
        return True
    return sc.overhead_s + sc.work_s - after.work_s <= sc.deadline_s - after.tick * TICK_S


def step(state: State, action: int, sc: Scenario) -> tuple[State, int, str]:
    """Apply the policy's choice for this tick: (next state, action taken, why it differs or "").

    spot while unavailable becomes idle; a choice that would leave too little time to finish on on-demand
    becomes on-demand (forced). On-demand is always allowed."""
    why = ""
    if action == SPOT and not sc.avail[state.tick]:
        action, why = NONE, "spot_unavailable"
    if action != OD:
        after = _run(state, action, sc)
        if _safe(after, sc):
            return after, action, why
        action, why = OD, "forced"
    return _run(state, OD, sc), OD, why


def dollars(units: int | float) -> float:
    return units / UNITS_PER_DOLLAR


def all_on_demand_cost(sc: Scenario) -> float:
    """0 on the score scale: the job on one on-demand instance from the start."""
    return PRICE_OD * (sc.work_s + sc.overhead_s) / 3600


def all_spot_cost(sc: Scenario) -> float:
    """100 on the score scale: the job on one spot instance that is never preempted."""
    return PRICE_SPOT * (sc.work_s + sc.overhead_s) / 3600


def normalised_score(cost: float, sc: Scenario) -> float:
    od, spot = all_on_demand_cost(sc), all_spot_cost(sc)
    return 100.0 * (od - cost) / (od - spot)


@dataclass(frozen=True)
class Outcome:
    """A whole run of a policy on a scenario, with where the money and the time went."""

    cost: float
    done_s: int | None
    ticks: int
    spot_s: int  # seconds paid on spot (overhead included)
    od_s: int
    idle_ticks: int
    restarts: int
    overhead_s: int  # seconds paid while sitting out restart overheads
    preemptions: int
    forced_ticks: int
    forced_od_s: int  # on-demand seconds in forced ticks
    spot_unavailable_requests: int
    first_forced_tick: int | None
    spot_unused_ticks: int  # ticks with spot available that the policy spent idle or on on-demand


def simulate(sc: Scenario, decide: Callable[[State, bool], int]) -> tuple[Outcome, list[int]]:
    """Run `decide(state, preempted) -> action` until the job is done; returns the outcome and the
    requested actions (what the policy asked for, before the environment's corrections)."""
    requested: list[int] = []
    outcome = replay(sc, requested, decide)
    return outcome, requested


def replay(sc: Scenario, decisions: list[int], decide: Callable[[State, bool], int] | None = None) -> Outcome:
    """Re-simulate from recorded decisions (or ask `decide` and record into `decisions`). Raises ValueError
    when the decisions end before the job is done."""
    state = State()
    spot_s = od_s = idle = restarts = overhead = preemptions = forced = forced_od = unavailable = unused = 0
    first_forced: int | None = None
    i = 0
    while state.done_s is None:
        if state.tick >= sc.ticks:  # cannot happen: forcing keeps on-demand possible to the end
            raise RuntimeError("the simulation ran past the deadline")
        state, preempted = begin_tick(state, sc)
        preemptions += preempted
        if decide is not None:
            decisions.append(decide(state, preempted))
        elif i >= len(decisions):
            raise ValueError(f"the decisions end at tick {i}, before the job is done "
                             f"({state.work_s / 3600:.2f} of {sc.work_s / 3600:g} h of work)")
        before = state
        state, taken, why = step(state, decisions[i], sc)
        i += 1
        unavailable += why == "spot_unavailable"
        unused += sc.avail[before.tick] and taken != SPOT
        if why == "forced":
            forced += 1
            first_forced = before.tick if first_forced is None else first_forced
        if taken == NONE:
            idle += 1
            continue
        used = (state.done_s - before.tick * TICK_S) if state.done_s is not None else TICK_S
        if taken != before.instance:
            restarts += 1
        over = sc.overhead_s if taken != before.instance else before.overhead_left_s
        overhead += min(over, used)
        if taken == SPOT:
            spot_s += used
        else:
            od_s += used
            forced_od += used if why == "forced" else 0
    return Outcome(dollars(state.cost_units), state.done_s, i, spot_s, od_s, idle, restarts, overhead, preemptions,
                   forced, forced_od, unavailable, first_forced, unused)
