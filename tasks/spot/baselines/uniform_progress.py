"""Uniform Progress (Wu et al., "Can't Be Late", NSDI'24), in this task's policy API (see seed/policy.py).

Keep the work done at least proportional to the time elapsed: the job should have done
work_total * elapsed / deadline by now. Spot whenever it is available; when it is not and the job is behind
that line, run on-demand; otherwise wait. Hysteresis, as in the paper: once on on-demand, stay on it until
the job is ahead of the line by two restart overheads, so a job that is just behind does not bounce between
on-demand and idle paying a restart each time. An on-demand instance is kept (rather than switched to spot)
while it is still sitting out its own restart overhead.
"""


def decide(obs) -> str:
    expected = obs.work_total_h * (obs.elapsed_h + obs.tick_h) / obs.deadline_h
    if obs.spot_available and not (obs.instance == "on_demand" and obs.overhead_left_h > 0):
        return "spot"
    if obs.instance == "on_demand":
        ahead_enough = obs.work_done_h >= expected + 2 * obs.restart_overhead_h
        return "idle" if ahead_enough else "on_demand"
    return "on_demand" if obs.work_done_h < expected else "idle"
