"""What the policy sees each tick, built in the untrusted process from the trusted server's reply.

Stdlib only and free of any trace: the child gets one tick's availability at a time from the server, so this
module (loaded in the child) never holds the future.
"""

from __future__ import annotations

CHOICES = ("spot", "on_demand", "idle")


class Observation:
    """One tick's view of the job, in hours (see the candidate's policy.py for the meaning of each field)."""

    __slots__ = (
        "cost_so_far", "deadline_h", "elapsed_h", "history", "instance", "overhead_left_h", "preempted",
        "price_on_demand", "price_spot", "restart_overhead_h", "slack_h", "spot_available", "tick", "tick_h",
        "time_left_h", "work_done_h", "work_left_h", "work_total_h",
    )

    def __init__(self, reply: dict, history: tuple[bool, ...], params: dict) -> None:
        tick_h = params["tick_h"]
        self.tick = int(reply["tick"])
        self.tick_h = tick_h
        self.elapsed_h = self.tick * tick_h
        self.deadline_h = params["deadline_h"]
        self.time_left_h = self.deadline_h - self.elapsed_h
        self.work_total_h = params["work_h"]
        self.work_done_h = reply["work_s"] / 3600
        self.work_left_h = self.work_total_h - self.work_done_h
        self.restart_overhead_h = params["restart_overhead_h"]
        self.spot_available = bool(reply["spot"])
        self.instance = reply["instance"]
        self.preempted = bool(reply["preempted"])
        self.overhead_left_h = reply["overhead_left_s"] / 3600
        self.cost_so_far = reply["cost"]
        self.slack_h = self.time_left_h - self.work_left_h - self.restart_overhead_h
        self.history = history
        self.price_spot = params["price_spot"]
        self.price_on_demand = params["price_on_demand"]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if k != "history")
        return f"Observation({shown}, history=<{len(self.history)} ticks>)"


def run_policy(decide, params: dict, ask) -> int:
    """Drive `decide(obs)` through a session: `ask(message)` returns the server's reply. Returns the number
    of decisions sent. A decision that is not one of CHOICES raises here, with the value."""
    reply = ask("start")
    history: list[bool] = []
    sent = 0
    while not reply.get("done"):
        if "error" in reply:
            raise RuntimeError(f"the simulator refused the last message: {reply['error']}")
        history.append(bool(reply["spot"]))
        choice = decide(Observation(reply, tuple(history), params))
        if not isinstance(choice, str) or choice not in CHOICES:
            raise ValueError(f"decide(obs) must return one of {', '.join(map(repr, CHOICES))}; "
                             f"got {choice!r:.80} at tick {reply['tick']}")
        reply = ask(choice)
        sent += 1
    return sent
