"""Dispatching rule for job-shop scheduling (minimise the makespan).

The schedule generator (non-delay generation) repeatedly finds the earliest time `time` at which some machine
can start an operation, collects every operation that is waiting for that machine and could start at `time`
(the conflict set), and calls `priority` once for each of them. The operation with the LOWEST value starts
at `time`; equal values go to the lower job index. Everything is an int or float in the instance's time
units; the return value must be an int or float (NaN is an error, +/-inf is allowed).

Features of the operation being ranked (job j, its k-th operation, needing machine M):
  duration               processing time of this operation.
  work_remaining         processing time of this operation plus all later operations of job j.
  ops_remaining          number of operations of job j not yet scheduled, this one included (>= 1).
  job_work_total         total processing time of all operations of job j.
  job_ready              time job j's previous operation finished (0 for its first op): when it joined the
                         queue of M. time - job_ready is how long it has been waiting.
  time                   the current decision time; every candidate would start now. Same for all candidates.
  machine_load_remaining processing time of all unscheduled operations on M, this one included. Same for all
                         candidates (they all need M).
  next_duration          processing time of job j's next operation after this one (0 if this is its last).
  next_machine_load      unscheduled processing time on the machine of that next operation (0 if none).
  next_machine_ready     time the machine of that next operation is free given what is scheduled so far
                         (0 if none); it is idle from then on until something is dispatched to it.
"""


def priority(
    duration: float,
    work_remaining: float,
    ops_remaining: float,
    job_work_total: float,
    job_ready: float,
    time: float,
    machine_load_remaining: float,
    next_duration: float,
    next_machine_load: float,
    next_machine_ready: float,
) -> float:
    """Shortest processing time first (SPT)."""
    return duration
