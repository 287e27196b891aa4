"""Schedule generator for the job-shop task: builds a schedule by asking a dispatching rule which operation to
run next.

Runs in the untrusted process (evaluate.produce calls it with the candidate's `priority` function); the judge
re-checks whatever comes out, so nothing here has to be trusted. Standard library only.

Two generation schemes are implemented; the task uses ``nondelay`` (README.md says why):

* ``nondelay`` - non-delay generation. t* is the smallest earliest start of any unscheduled operation whose
  job predecessor is scheduled; the machine on which t* is reached (the lowest job index decides when several
  machines can start at t*) is the one a decision is made for, and its conflict set is every such operation on
  that machine that can start at t*. A machine is never left idle while an operation is waiting for it.
* ``active`` - Giffler-Thompson active schedule generation. C* is the smallest earliest completion time of
  the ready operations, M* the machine of that operation; the conflict set is every ready operation on M*
  whose earliest start is < C*, and the chosen one starts at its earliest start (so a machine may wait for a
  job that is about to arrive). Kept for comparison and experiments.

The rule is called once per operation of the conflict set (also when there is only one) with the keyword
arguments in FEATURES (documented in seed/dispatch.py); the smallest value wins and equal values go to the
lower job index, so a schedule is a deterministic function of the instance and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real

# Names of the keyword arguments the rule is called with, in documentation order.
FEATURES = (
    "duration",
    "work_remaining",
    "ops_remaining",
    "job_work_total",
    "job_ready",
    "time",
    "machine_load_remaining",
    "next_duration",
    "next_machine_load",
    "next_machine_ready",
)

SCHEMES = ("active", "nondelay")

Rule = Callable[..., float]


def _as_number(value: object) -> float:
    """The rule's value as a float; anything that is not an ordinary real number is the candidate's bug."""
    # The fast path: almost every call returns a plain int or float.
    if type(value) is float:
        if value != value:  # NaN compares unequal to itself and would scramble the ordering silently
            raise ValueError(
                "priority() returned nan; it must return a real number (lower = dispatched first)"
            )
        return value
    if type(value) is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"priority() returned {value!r} of type {type(value).__name__}; "
            "it must return an int or float (lower = dispatched first)"
        )
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"priority() returned {value!r} (NaN); it must return a real number")
    return number


def generate(
    durations: Sequence[Sequence[int]],
    machines: Sequence[Sequence[int]],
    priority: Rule,
    scheme: str = "nondelay",
) -> list[list[int]]:
    """Schedule every operation; returns ``starts[j][k]``, the start time of operation k of job j.

    ``durations[j][k]`` is the processing time of operation k of job j and ``machines[j][k]`` the machine it
    needs; jobs visit their operations in order k = 0, 1, ... The rule is called as
    ``priority(**features)`` for every operation of the conflict set and the smallest value wins.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    active_scheme = scheme == "active"
    n_jobs = len(durations)
    n_machines = 1 + max((mach for row in machines for mach in row), default=-1)

    # Remaining work per operation (this op and the later ones of its job) is a constant of the instance:
    # precompute it once instead of re-summing job tails at every decision.
    work_left: list[list[int]] = []
    for row in durations:
        tail, acc = [0] * len(row), 0
        for k in range(len(row) - 1, -1, -1):
            acc += row[k]
            tail[k] = acc
        work_left.append(tail)
    job_total = [tail[0] if tail else 0 for tail in work_left]
    machine_load = [0] * n_machines  # unscheduled processing time still waiting for each machine
    for j in range(n_jobs):
        for k, mach in enumerate(machines[j]):
            machine_load[mach] += durations[j][k]

    n_ops = [len(row) for row in durations]
    next_op = [0] * n_jobs
    job_ready = [0] * n_jobs
    machine_ready = [0] * n_machines
    starts: list[list[int]] = [[0] * n for n in n_ops]
    pending = [j for j in range(n_jobs) if n_ops[j] > 0]  # jobs with unscheduled ops, kept sorted by index

    while pending:
        # Find the machine the decision is about: the one where the smallest earliest start (non-delay) or
        # earliest completion (active) is reached. A linear scan over the ready ops (one per job) is cheap
        # compared with calling the rule, and keeps the code obvious.
        best_key = math.inf
        target = -1
        for j in pending:
            k = next_op[j]
            mach = machines[j][k]
            est = job_ready[j] if job_ready[j] > machine_ready[mach] else machine_ready[mach]
            key = est + durations[j][k] if active_scheme else est
            if key < best_key:  # strict: the lowest job index wins ties, for determinism
                best_key, target = key, mach

        # Conflict set on the target machine.
        m_ready = machine_ready[target]
        conflict: list[tuple[int, int]] = []  # (job, earliest start)
        for j in pending:
            k = next_op[j]
            if machines[j][k] != target:
                continue
            est = job_ready[j] if job_ready[j] > m_ready else m_ready
            if (est < best_key) if active_scheme else (est == best_key):
                conflict.append((j, est))
        now = min(est for _, est in conflict)

        # The rule is called even for a one-op conflict set (no choice to make) so that a broken rule fails
        # loudly on every instance rather than only on the ones where it happens to matter.
        best_value = math.inf
        chosen, chosen_est = -1, 0
        load = machine_load[target]
        for j, est in conflict:
            k = next_op[j]
            has_next = k + 1 < n_ops[j]
            value = _as_number(
                priority(
                    duration=durations[j][k],
                    work_remaining=work_left[j][k],
                    ops_remaining=n_ops[j] - k,
                    job_work_total=job_total[j],
                    job_ready=job_ready[j],
                    time=now,
                    machine_load_remaining=load,
                    next_duration=durations[j][k + 1] if has_next else 0,
                    next_machine_load=machine_load[machines[j][k + 1]] if has_next else 0,
                    next_machine_ready=machine_ready[machines[j][k + 1]] if has_next else 0,
                )
            )
            # Strict < keeps the lowest job index on ties (the conflict set is in job order); `chosen < 0`
            # makes a rule that answers +inf for everything still pick the first op.
            if value < best_value or chosen < 0:
                best_value, chosen, chosen_est = value, j, est

        k = next_op[chosen]
        end = chosen_est + durations[chosen][k]
        starts[chosen][k] = chosen_est
        job_ready[chosen] = end
        machine_ready[target] = end
        machine_load[target] -= durations[chosen][k]
        next_op[chosen] = k + 1
        if k + 1 == n_ops[chosen]:
            pending.remove(chosen)
    return starts


def makespan(durations: Sequence[Sequence[int]], starts: Sequence[Sequence[int]]) -> int:
    """Completion time of the last operation (no feasibility check; the judge has its own)."""
    ends = (
        s + d for srow, drow in zip(starts, durations, strict=True) for s, d in zip(srow, drow, strict=True)
    )
    return max(ends, default=0)
