"""Evaluator of the job-shop task: a dispatching rule (the candidate's `dispatch.priority`) drives a non-delay
schedule generator on Taillard instances; a trusted judge re-checks the schedule and computes the makespan.

Loaded twice, in two processes:

* trusted harness: `prepare(instance)` gives what the candidate may see, `judge(...)` scores the output.
  The candidate directory is not importable there and nothing in `output` is trusted.
* untrusted child: `produce(inputs)` imports the candidate's `dispatch` module (only inside the function, so
  loading this file never runs candidate code) and returns ``{"starts": starts}`` where ``starts[j][k]`` is
  the integer start time of operation k of job j (jobs, operations and machines numbered from 0).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from evolver_harness import report

TASK_DIR = Path(__file__).resolve().parent
DATA_FILE = TASK_DIR / "data" / "taillard.json"
SIMULATOR_FILE = TASK_DIR / "jobshop_sim.py"
SCHEME = "nondelay"  # see README.md: reproduces the literature's SPT/MWKR gaps on Taillard 15x15
# Start times beyond this are rejected before any arithmetic, so a hostile output of huge integers cannot
# make the judge slow; real schedules of the shipped instances end below 10^5.
MAX_START = 10**9


# ---------------------------------------------------------------------------------------------------------
# Data (read from the task folder; never from anything the candidate returns)


@lru_cache(maxsize=1)
def _instances() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def _instance(instance: str) -> dict[str, Any]:
    data = _instances()
    if instance not in data:
        raise KeyError(f"unknown job-shop instance {instance!r}; shipped: {', '.join(sorted(data))}")
    return data[instance]


def best_known(instance: str) -> int:
    """Optimal makespan when proven, else the best known upper bound."""
    meta = _instance(instance)["metadata"]
    return int(meta["optimum"] if meta["optimum"] is not None else meta["upper_bound"])


# ---------------------------------------------------------------------------------------------------------
# Harness side 1: what the candidate sees


def prepare(instance: str) -> dict[str, Any]:
    """The instance without its bounds: the rule must not be able to key on the answer."""
    inst = _instance(instance)
    return {"name": instance, "durations": inst["duration_matrix"], "machines": inst["machines_matrix"]}


# ---------------------------------------------------------------------------------------------------------
# Untrusted side: run the candidate's rule


_simulator: ModuleType | None = None


def _load_simulator() -> ModuleType:
    """jobshop_sim.py from this folder, loaded by path so nothing earlier on sys.path can shadow it."""
    global _simulator
    if _simulator is None:
        spec = importlib.util.spec_from_file_location("jobshop_sim", SIMULATOR_FILE)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the schedule generator {SIMULATOR_FILE.name}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _simulator = module
    return _simulator


def produce(inputs: dict[str, Any]) -> dict[str, list[list[int]]]:
    """Build the schedule with the candidate's rule. Errors in the rule propagate as its traceback."""
    sim = _load_simulator()
    dispatch = importlib.import_module("dispatch")  # the candidate's module, first on sys.path here
    rule = getattr(dispatch, "priority", None)
    if not callable(rule):
        raise TypeError(
            "dispatch.py must define a function priority(duration, work_remaining, ...) -> float; "
            f"found {type(rule).__name__}"
        )
    starts = sim.generate(inputs["durations"], inputs["machines"], rule, SCHEME)
    return {"starts": starts}


# ---------------------------------------------------------------------------------------------------------
# Harness side 2: the judge


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:  # outputs can be huge; the reason only needs to identify the value
        text = text[:40] + "..."
    return f"{text} ({type(value).__name__})"


def check_schedule(
    durations: list[list[int]], machines: list[list[int]], output: Any
) -> tuple[list[list[int]] | None, str]:
    """Validate an untrusted output; returns (starts, "") when feasible, else (None, precise reason)."""
    if not isinstance(output, dict) or "starts" not in output:
        return None, f'output must be an object {{"starts": [[int, ...], ...]}}, got {_describe(output)}'
    starts = output["starts"]
    n_jobs = len(durations)
    if not isinstance(starts, list) or len(starts) != n_jobs:
        size = f"a list of {len(starts)}" if isinstance(starts, list) else _describe(starts)
        return None, f"starts must be a list of {n_jobs} lists (one per job), got {size}"
    for j, row in enumerate(starts):
        n_ops = len(durations[j])
        if not isinstance(row, list):
            return None, f"starts[{j}] must be a list of {n_ops} ints, got {_describe(row)}"
        if len(row) != n_ops:
            return None, f"job {j} has {len(row)} start times, expected {n_ops} (one per operation, in order)"
        for k, value in enumerate(row):
            # type() rather than isinstance(): bool is an int subclass and must not pass as a time.
            if type(value) is not int:
                return None, f"start of job {j} op {k} must be an int, got {_describe(value)}"
            if value < 0:
                return None, f"start of job {j} op {k} is negative ({value})"
            if value > MAX_START:
                return None, f"start of job {j} op {k} is {value}, beyond any sensible schedule ({MAX_START})"

    # Precedence inside each job: operation k+1 may start only when k has finished.
    for j, row in enumerate(starts):
        for k in range(len(row) - 1):
            end = row[k] + durations[j][k]
            if row[k + 1] < end:
                return None, (
                    f"precedence violated in job {j}: op {k + 1} starts at {row[k + 1]} but op {k} "
                    f"(machine {machines[j][k]}, start {row[k]}, duration {durations[j][k]}) ends at {end}"
                )

    # One operation at a time per machine: sort each machine's operations by start, compare neighbours.
    by_machine: dict[int, list[tuple[int, int, int, int]]] = {}
    for j, row in enumerate(starts):
        for k, start in enumerate(row):
            by_machine.setdefault(machines[j][k], []).append((start, start + durations[j][k], j, k))
    for mach in sorted(by_machine):
        ops = sorted(by_machine[mach])
        for (s1, e1, j1, k1), (s2, e2, j2, k2) in itertools.pairwise(ops):
            if s2 < e1:
                return None, (
                    f"machine {mach} overlap: job {j1} op {k1} runs [{s1}, {e1}) and job {j2} op {k2} "
                    f"runs [{s2}, {e2})"
                )
    return starts, ""


def _top(weights: dict[int, int], label: str, n: int = 3) -> str:
    ranked = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:n]
    return ", ".join(f"{label}{key} {value}" for key, value in ranked)


def analyse(durations: list[list[int]], machines: list[list[int]], starts: list[list[int]]) -> dict[str, Any]:
    """Facts a scheduling expert would look at, for a feasible schedule."""
    n_jobs = len(durations)
    n_machines = 1 + max(mach for row in machines for mach in row)
    ends = [
        [s + d for s, d in zip(srow, drow, strict=True)] for srow, drow in zip(starts, durations, strict=True)
    ]
    makespan = max(max(row) for row in ends)

    load = [0] * n_machines
    last_end = [0] * n_machines
    seq: list[list[tuple[int, int, int]]] = [[] for _ in range(n_machines)]  # (start, job, op) per machine
    for j in range(n_jobs):
        for k, mach in enumerate(machines[j]):
            load[mach] += durations[j][k]
            last_end[mach] = max(last_end[mach], ends[j][k])
            seq[mach].append((starts[j][k], j, k))
    machine_prev: dict[tuple[int, int], tuple[int, int]] = {}
    for ops in seq:
        ops.sort()
        for (_, j1, k1), (_, j2, k2) in itertools.pairwise(ops):
            machine_prev[(j2, k2)] = (j1, k1)

    job_work = [sum(row) for row in durations]
    lb_machine = max(range(n_machines), key=lambda m: (load[m], -m))
    lb_job = max(range(n_jobs), key=lambda j: (job_work[j], -j))
    last_machine = max(range(n_machines), key=lambda m: (last_end[m], -m))

    # Critical path, traced backwards from the last operation of the last machine: step to the job
    # predecessor or the machine predecessor that ends exactly when the current op starts (job arc first);
    # if neither does, the op was delayed for no reason and the gap is counted as unforced idle.
    _, j, k = seq[last_machine][-1]
    path_ops = 0
    job_arcs = machine_arcs = 0
    unforced = 0
    path_by_job: dict[int, int] = {}
    path_by_machine: dict[int, int] = {}
    while True:
        path_ops += 1
        path_by_job[j] = path_by_job.get(j, 0) + durations[j][k]
        path_by_machine[machines[j][k]] = path_by_machine.get(machines[j][k], 0) + durations[j][k]
        start = starts[j][k]
        job_pred = (j, k - 1) if k > 0 else None
        mach_pred = machine_prev.get((j, k))
        job_end = ends[j][k - 1] if job_pred else 0
        mach_end = ends[mach_pred[0]][mach_pred[1]] if mach_pred else 0
        if job_pred and job_end == start:
            (j, k), job_arcs = job_pred, job_arcs + 1
        elif mach_pred and mach_end == start:
            (j, k), machine_arcs = mach_pred, machine_arcs + 1
        else:
            unforced += start - max(job_end, mach_end)
            if job_pred is None and mach_pred is None:
                break
            if mach_pred is None or (job_pred is not None and job_end >= mach_end):
                (j, k), job_arcs = job_pred, job_arcs + 1
            else:
                (j, k), machine_arcs = mach_pred, machine_arcs + 1

    completion = [row[-1] for row in ends]
    late_jobs = sorted(range(n_jobs), key=lambda j: (-completion[j], j))[:3]
    return {
        "makespan": makespan,
        "n_machines": n_machines,
        "lb": max(load[lb_machine], job_work[lb_job]),
        "lb_machine": lb_machine,
        "lb_machine_load": load[lb_machine],
        "lb_machine_end": last_end[lb_machine],
        "lb_machine_idle": last_end[lb_machine] - load[lb_machine],
        "lb_job": lb_job,
        "lb_job_work": job_work[lb_job],
        "last_machine": last_machine,
        "last_machine_load": load[last_machine],
        "last_machine_idle": last_end[last_machine] - load[last_machine],
        "idle_pct": 100.0 * (1.0 - sum(load) / (n_machines * makespan)),
        "path_ops": path_ops,
        "job_arcs": job_arcs,
        "machine_arcs": machine_arcs,
        "unforced_idle": unforced,
        "path_jobs": _top(path_by_job, "J"),
        "path_machines": _top(path_by_machine, "M"),
        "late_jobs": [(j, completion[j], job_work[j]) for j in late_jobs],
    }


def feedback_text(best: int, facts: dict[str, Any]) -> str:
    """The side information the LLM reads: short, numeric, pointing at where the makespan comes from."""
    f = facts
    gap = 100.0 * (f["makespan"] - best) / best
    late = "; ".join(
        f"J{j} ends {end} (own work {work}, waited {end - work})" for j, end, work in f["late_jobs"]
    )
    return (
        f"makespan {f['makespan']}, best known {best}, gap {gap:.1f}%; simple lower bound {f['lb']} "
        f"(max machine load M{f['lb_machine']} {f['lb_machine_load']}, longest job J{f['lb_job']} "
        f"{f['lb_job_work']}).\n"
        f"Last machine to finish: M{f['last_machine']} (load {f['last_machine_load']}, idle "
        f"{f['last_machine_idle']} before its last op ends). Most loaded M{f['lb_machine']} ends at "
        f"{f['lb_machine_end']}, idle {f['lb_machine_idle']} before that.\n"
        f"Critical path: {f['path_ops']} ops, {f['job_arcs']} job arcs + {f['machine_arcs']} machine arcs, "
        f"unforced idle {f['unforced_idle']}; processing on it by job: {f['path_jobs']}; "
        f"by machine: {f['path_machines']}.\n"
        f"Machines idle {f['idle_pct']:.1f}% of capacity ({f['n_machines']} machines x makespan).\n"
        f"Last jobs: {late}."
    )


def judge(instance: str, inputs: Any, output: Any, usage: dict[str, float]) -> dict[str, Any]:
    """Score one schedule. `inputs` is ignored: the instance is reloaded from the task data."""
    inst = _instance(instance)
    durations, machines = inst["duration_matrix"], inst["machines_matrix"]
    starts, reason = check_schedule(durations, machines, output)
    if starts is None:
        return report(instance, 0.0, feedback=f"infeasible schedule, rejected: {reason}", invalid=True)
    best = best_known(instance)
    facts = analyse(durations, machines, starts)
    makespan = facts["makespan"]
    return report(
        instance,
        best / makespan,
        feedback=feedback_text(best, facts),
        gap_pct=100.0 * (makespan - best) / best,
        runtime_s=float(usage["cpu_s"]),
    )


__all__ = ["best_known", "judge", "prepare", "produce"]
