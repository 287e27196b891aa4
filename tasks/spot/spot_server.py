"""The trusted session server: holds the scenario's trace, hands the policy one tick at a time, records every
decision. Lives in the harness process; the policy only ever sees its replies."""

from __future__ import annotations

from typing import Any

from spot_sim import ACTIONS, NAMES, Scenario, State, begin_tick, dollars, step


class SpotServer:
    """`handle("start")` returns the first tick's observation; then `handle(choice)` applies the choice
    ("spot", "on_demand" or "idle") to the current tick and returns the next one, or {"done": True, ...}."""

    def __init__(self, sc: Scenario) -> None:
        self.scenario = sc
        self.state = State()
        self.decisions: list[int] = []  # what the policy asked for, tick by tick
        self.violation = ""  # the first protocol error of the policy's side, if any
        self.started = False

    def handle(self, message: Any) -> dict[str, Any]:
        if self.violation:
            return {"error": self.violation}
        if not self.started:
            if message != "start":
                return self._violate(f'the first message must be "start", got {message!r:.60}')
            self.started = True
            return self._begin_tick()
        if self.state.done_s is not None:
            return self._violate(f"message {message!r:.60} after the job finished")
        action = ACTIONS.get(message) if isinstance(message, str) else None
        if action is None:
            return self._violate(f"tick {self.state.tick}: {message!r:.60} is not one of "
                                 f"{', '.join(map(repr, ACTIONS))}")
        self.decisions.append(action)
        self.state, _, _ = step(self.state, action, self.scenario)
        if self.state.done_s is not None:
            return {"done": True, "tick": self.state.tick, "cost": dollars(self.state.cost_units)}
        return self._begin_tick()

    def _violate(self, reason: str) -> dict[str, Any]:
        self.violation = reason
        return {"error": reason}

    def _begin_tick(self) -> dict[str, Any]:
        self.state, preempted = begin_tick(self.state, self.scenario)
        s = self.state
        return {"tick": s.tick, "spot": self.scenario.avail[s.tick], "work_s": s.work_s,
                "instance": NAMES[s.instance], "overhead_left_s": s.overhead_left_s,
                "cost": round(dollars(s.cost_units), 6), "preempted": preempted}
