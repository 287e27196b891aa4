"""Spot-instance scheduling policy: finish a 48 h job before its deadline as cheaply as possible.

The simulator calls `decide(obs)` once per 10-minute tick and applies the answer to that tick:
  "spot"       run on a spot instance ($0.9731/h); only possible when obs.spot_available (else the tick idles)
  "on_demand"  run on an on-demand instance ($3.06/h); always available
  "idle"       run nothing (free; no progress)
Starting an instance or switching its type costs obs.restart_overhead_h of paid time without progress. A spot
instance is preempted when spot becomes unavailable (obs.preempted, obs.instance == "none"). When any choice
but on-demand would leave too little time to finish on on-demand, the simulator forces on-demand for the tick.

obs fields (hours unless said otherwise):
  tick, tick_h            tick number (from 0) and tick length (1/6 h)
  elapsed_h, deadline_h, time_left_h
  work_total_h (48), work_done_h, work_left_h
  restart_overhead_h      overhead of every (re)start: 0.02, 0.2 or 0.4
  spot_available          bool: a spot instance can run in this tick
  instance                what runs at the start of this tick: "spot", "on_demand" or "none"
  preempted               bool: the spot instance was just lost
  overhead_left_h         restart overhead the running instance still has to sit out
  slack_h                 time_left_h - work_left_h - restart_overhead_h: time to spare if on-demand started now
                          (on-demand is forced once this drops below one tick)
  history                 tuple of bools: spot availability of every tick so far, this one included
  cost_so_far             $ spent so far
  price_spot, price_on_demand   $ per hour
The module may keep state between calls in globals: one process runs one scenario.
"""


def decide(obs) -> str:
    """Greedy: spot whenever available, otherwise wait (the simulator forces on-demand near the deadline)."""
    if obs.spot_available:
        return "spot"
    return "idle"
