"""Evaluator of the spot task: the candidate's `policy.decide(obs)` chooses spot / on-demand / idle every
10-minute tick of a 48 h job with a deadline; the cost is computed by the trusted side only.

Loaded twice, in two processes:

* trusted harness: `prepare` gives the scenario's parameters (never its trace), `serve` starts the session
  server that holds the trace and feeds the policy one tick at a time, recording each decision, and `judge`
  re-simulates those recorded decisions on the trace and computes the cost itself.
* untrusted child: `produce(inputs, channel)` imports the candidate's `policy` module and relays its decisions
  through the channel. The child never holds a future tick: the trace stays in the harness process, and the
  task's trace files are refused to the child's own file opens (see _forbid_task_data).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from evolver_harness import report
from spot_api import run_policy
from spot_sim import (
    PRICE_OD,
    PRICE_SPOT,
    TICK_S,
    WORK_S,
    Outcome,
    Scenario,
    all_on_demand_cost,
    all_spot_cost,
    dollars,
    normalised_score,
    replay,
    scenario,
)

TASK_DIR = Path(__file__).resolve().parent
DATA_FILE = TASK_DIR / "data" / "traces.json"
# Files the child may not open: the traces (and the optimum beside them) and the script that makes them.
PROTECTED_NAMES = ("traces.json", "generate_traces.py")
# Ways around a refused open: other programs, foreign code, new names for a protected file.
BLOCKED_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.link", "os.symlink", "os.rename",
    "shutil.copyfile", "sys._current_frames",
})


# ---------------------------------------------------------------------------------------------------------
# Data: trusted side only (never called in the child)


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def _scenario(instance: str) -> tuple[Scenario, dict[str, Any]]:
    scenarios = _data()["scenarios"]
    if instance not in scenarios:
        raise KeyError(f"unknown spot scenario {instance!r}; shipped: {len(scenarios)} (see instances.toml)")
    meta = scenarios[instance]
    trace = _data()["traces"][meta["trace"]]["avail"]
    return scenario(trace, meta["deadline_h"], meta["overhead_h"]), meta


# ---------------------------------------------------------------------------------------------------------
# Harness side: what the policy may know, and the session server


def prepare(instance: str) -> dict[str, float]:
    """The scenario's parameters; its availability trace is served tick by tick, never handed over."""
    _, meta = _scenario(instance)
    return {"deadline_h": meta["deadline_h"], "restart_overhead_h": meta["overhead_h"], "work_h": WORK_S / 3600,
            "tick_h": TICK_S / 3600, "price_spot": PRICE_SPOT, "price_on_demand": PRICE_OD}


def serve(instance: str, inputs: dict[str, Any]):
    from spot_server import SpotServer  # trusted only

    sc, _ = _scenario(instance)
    return SpotServer(sc)


# ---------------------------------------------------------------------------------------------------------
# Untrusted side


def _forbid_task_data() -> None:
    """Refuse, for the rest of this process, every open of the trace files and the other ways to reach them.
    An audit hook cannot be removed once added; it runs before the candidate's module is even imported."""
    protected_dir = os.path.realpath(DATA_FILE.parent)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path = args[0]
            if isinstance(path, (str, bytes, os.PathLike)):
                text = os.fsdecode(path)
                real = os.path.realpath(text)
                if os.path.basename(text) in PROTECTED_NAMES or os.path.basename(real) in PROTECTED_NAMES \
                        or real.startswith(protected_dir + os.sep):
                    raise PermissionError(f"the policy may not read the task's trace data ({text})")
        elif event in BLOCKED_EVENTS:
            raise PermissionError(f"the policy may not use {event} (the trace stays with the simulator)")
        elif event == "import" and args and args[0] == "_posixsubprocess":
            # Its fork_exec starts programs without any audit event of its own (`cat` of the traces).
            raise PermissionError("the policy may not start programs (the trace stays with the simulator)")

    sys.addaudithook(hook)


def produce(inputs: dict[str, Any], channel) -> dict[str, int]:
    """Run the candidate's policy tick by tick through the session. Its errors propagate with their traceback."""
    _forbid_task_data()
    policy = importlib.import_module("policy")  # the candidate's module, first on sys.path here
    decide = getattr(policy, "decide", None)
    if not callable(decide):
        raise TypeError(f"policy.py must define decide(obs) -> 'spot' | 'on_demand' | 'idle'; found "
                        f"{type(decide).__name__}")
    return {"decisions": run_policy(decide, inputs, channel.ask)}


# ---------------------------------------------------------------------------------------------------------
# Harness side: the judge


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def feedback_text(sc: Scenario, meta: dict[str, Any], out: Outcome) -> str:
    """Where the money and the time went, beside the optimum and the two extremes."""
    gap = 100.0 * (out.cost - meta["optimum"]) / meta["optimum"]
    done_h = (out.done_s or 0) / 3600
    spot_cost, od_cost = PRICE_SPOT * out.spot_s / 3600, PRICE_OD * out.od_s / 3600
    lines = [
        f"cost ${out.cost:.2f}: offline optimum ${meta['optimum']:.2f} (gap {gap:.1f}%), greedy "
        f"${meta['greedy']:.2f}, all on-demand ${all_on_demand_cost(sc):.2f}, all spot ${all_spot_cost(sc):.2f}. "
        f"Finished at {done_h:.2f} h (deadline {sc.deadline_s / 3600:g} h, restart overhead "
        f"{sc.overhead_s / 3600:g} h).",
        f"Money: spot {_h(out.spot_s)} ${spot_cost:.2f}; on-demand {_h(out.od_s)} ${od_cost:.2f}, of which "
        f"{_h(out.forced_od_s)} forced by the deadline"
        + (f" (first forced tick at {out.first_forced_tick * TICK_S / 3600:.1f} h)." if out.forced_ticks else ".")
        + f" {out.restarts} restarts paid {_h(out.overhead_s)} of overhead; {out.preemptions} preemptions.",
        f"Time: idle {_h(out.idle_ticks * TICK_S)}; spot was available but unused (idle or on-demand) for "
        f"{_h(out.spot_unused_ticks * TICK_S)}; spot available in {_available_pct(sc, out):.0f}% of the ticks "
        "until the finish.",
    ]
    if out.spot_unavailable_requests:
        lines.append(f"Asked for spot while unavailable in {out.spot_unavailable_requests} ticks (run as idle).")
    return "\n".join(lines)


def _available_pct(sc: Scenario, out: Outcome) -> float:
    ticks = max(1, out.ticks)
    return 100.0 * sum(sc.avail[:ticks]) / ticks


def judge(instance: str, inputs: Any, output: Any, usage: dict[str, float], session=None) -> dict[str, Any]:
    """Score the decisions the server recorded; the child's output is not trusted and not used."""
    if session is None:
        raise RuntimeError("the spot judge needs the session server (serve) of this instance")
    sc, meta = _scenario(instance)
    if session.violation:
        return report(instance, 0.0, feedback=f"the policy broke the session protocol: {session.violation}",
                      invalid=True)
    try:
        out = replay(sc, list(session.decisions))
    except ValueError as exc:
        return report(instance, 0.0, feedback=f"the policy stopped early: {exc}", invalid=True)
    if dollars(session.state.cost_units) != out.cost:
        raise RuntimeError(f"the server's cost {dollars(session.state.cost_units)} differs from the replay's "
                           f"{out.cost}: simulator bug")
    if out.done_s is None or out.done_s > sc.deadline_s:  # cannot happen with forced on-demand; kept as a guard
        return report(instance, 0.0, feedback=f"missed the deadline: {feedback_text(sc, meta, out)}",
                      cost=out.cost, gap_pct=100.0 * (out.cost - meta["optimum"]) / meta["optimum"])
    return report(instance, normalised_score(out.cost, sc), feedback=feedback_text(sc, meta, out), cost=out.cost,
                  gap_pct=100.0 * (out.cost - meta["optimum"]) / meta["optimum"])


__all__ = ["judge", "prepare", "produce", "serve"]
