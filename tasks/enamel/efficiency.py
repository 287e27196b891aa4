"""The trusted half of the efficiency measurement: ENAMEL's eff score, timed from outside the candidate.

Only the harness's trusted process imports this module. `EfficiencyServer(problem)` generates the efficiency
inputs (ENAMEL's generator, fixed seeds), runs and times the expert reference on them here, then answers the
untrusted child over the session channel:

    child -> {"op": "next"}                        server -> {"args": [...], "limit_s": x} or {"done": true}
    child -> {"op": "go"}                          server -> {"go": true}         (the clock starts)
    child -> {"op": "answer", "outputs": [...]}    server -> the next case, or {"done": true}
             (or {"op": "answer", "timeout": true} / {"op": "answer", "raised": "..."})

A case is K inputs of one ENAMEL test (level, cid), each generated from its own seed, so nothing can be cached
between repeats; K is chosen so that the reference needs a few milliseconds for the batch. Time is CPU time,
read by this process from the kernel (the CPU clocks of every process descending from the harness, plus what
exited descendants left to their parents), from the "go" reply to the answer: wall time on a shared machine
measures the neighbours, and the candidate's process tree cannot hide work from the kernel's accounting. CPU
time the child spends between receiving the inputs and asking "go" (decoding them) counts too beyond an
allowance of twice the decoding time measured here, so inputs cannot be worked on before the clock starts.
The reference is timed here (CPU time of this thread) on the same inputs with the same output encoding work,
and outputs are checked against the reference's with ENAMEL's checker as they arrive.

Score (ENAMEL's eff, Qiu et al. 2025): per test, the candidate's time t (minimum over repeats of its time
relative to the reference's, times the reference's time r); per level, t_L and r_L the maxima over its tests;
T = ALPHA * max_L r_L; eff_L = max(0, T - t_L) / (T - r_L) (1.0 = as fast as the reference, more if faster);
a test slower than T + TOLERANCE_S times the level (and every level above) out at 0; eff = the mean of eff_L
weighted by HARDNESS.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import enamel_inputs
import typed_json

ALPHA = 2.0  # ENAMEL's timeout factor
HARDNESS = (3.0, 3.0, 4.0)  # ENAMEL's weights of levels 1-3 (level 0, weight 0, is a correctness check here)
TESTS_PER_LEVEL = 4  # ENAMEL's n_tests for levels 1-3: cid 0..3
REPEATS = 2  # candidate runs per test, each on fresh inputs; the minimum ratio counts
REF_REPEATS = 3  # reference runs per batch (minimum)
SIZE_SCALE = 0.25  # ENAMEL's level sizes scaled down (see README): affordable on a shared CPU
TARGET_BATCH_S = 0.002  # reference time a batch should reach, so the channel's own cost is noise
GENERATE_BUDGET_S = 0.08  # input generation per level, at most (generators are Python loops; the reference often
MAX_BATCH = 64  # is one builtin call)
TOLERANCE_S = 0.01  # ENAMEL's tolerance on the time limit
CALIBRATIONS = 3  # empty cases first: the channel's own CPU cost per case, subtracted from every case
MAX_OVERHEAD_S = 0.0003  # ... at most this much (a candidate burning CPU on empty cases gains no more)
DECODE_ALLOWANCE = 2.0  # decoding time allowed before "go", relative to the decoding time measured here
SEED = "enamel-evolver-1"


def scaled(size: int, level: int) -> int:
    return size if level == 0 else max(1, round(size * SIZE_SCALE))


def input_seed(task_id: str, level: int, cid: int, repeat: int, copy: int) -> str:
    return f"{SEED}/{task_id}/{level}/{cid}/{repeat}/{copy}"


@dataclass
class Reference:
    """ENAMEL's reference solution and checker, loaded from the dataset in this (trusted) process."""

    problem: dict[str, Any]
    fn: Callable[..., Any] = field(init=False)
    check: Callable[[Any, Any, Any], Any] = field(init=False)

    def __post_init__(self) -> None:
        p = self.problem
        scope: dict[str, Any] = {"__name__": "enamel_reference"}
        source = p["prompt"] + "\n" + p["reference"] + "\n" + p["checker"]
        exec(compile(source, f"reference of {p['task_id']}", "exec"), scope)
        self.fn, self.check = scope[p["entry_point"]], scope["__check"]

    def accepts(self, args: Any, expected: Any, output: Any) -> bool:
        try:
            return bool(self.check(tuple(args), expected, output))
        except Exception:  # noqa: BLE001 - a checker failing on an odd output means the output is wrong
            return False


@dataclass
class Case:
    level: int
    cid: int
    repeat: int
    size: int
    args: list[tuple[Any, ...]]  # K inputs (argument tuples)
    message: dict[str, Any]  # the reply that carries them
    expected: list[Any]
    ref_s: float  # reference time of the batch (minimum of REF_REPEATS)
    allowance_s: float  # time the child may take to decode the batch before "go"
    early_s: float = 0.0  # decoding time beyond the allowance, added to the batch's time
    time_s: float | None = None  # candidate's time of the batch
    verdict: str = ""  # "", "ok", "timeout", "wrong", "raised", "protocol"
    detail: str = ""
    wrong_index: int = -1
    got: Any = None

    @property
    def k(self) -> int:
        return len(self.args)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                found += [int(x) for x in f.read().split()]
    except OSError:
        pass  # the process is gone (its CPU time went to its parent's account)
    return found


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def descendants_cpu_s() -> float:
    """CPU seconds used so far by every process below this one: live ones by their CPU clocks (exact), exited
    ones through their parents' accounts (cutime/cstime of live descendants, and this process's own account
    of the children it reaped). Only deltas of it mean anything."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    stack, seen = _children(os.getpid()), set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += time.clock_gettime((~pid << 3) | 2)  # the kernel's CPU clock of process `pid`
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) * _TICK_S  # cutime, cstime: its reaped children
        except (OSError, ValueError, IndexError):
            continue
        stack += _children(pid)
    return total


def _time_reference(ref: Reference, payload: str, reps: int) -> tuple[float, list[Any]]:
    """Minimum time of the reference on a batch, paying the child's output encoding work too."""
    best, outputs = math.inf, []
    for _ in range(reps):
        args = typed_json.decode(json.loads(payload)["args"])  # fresh copies: solutions may mutate inputs
        gc.disable()  # as in the child while its clock runs
        try:
            start = time.thread_time()
            outputs = [ref.fn(*a) for a in args]
            json.loads(json.dumps([typed_json.encode(o) for o in outputs]))
            best = min(best, time.thread_time() - start)
        finally:
            gc.enable()
    return best, outputs


def _decode_time(payload: str) -> float:
    best = math.inf
    for _ in range(2):
        start = time.thread_time()
        typed_json.decode(json.loads(payload)["args"])
        best = min(best, time.thread_time() - start)
    return best


def _batch_size(ref_s: float, generate_s: float) -> int:
    """Inputs per case: enough for the reference to need TARGET_BATCH_S (tiny calls would be measured in
    channel overhead), but no more than GENERATE_BUDGET_S of input generation per level."""
    wanted = math.ceil(TARGET_BATCH_S / max(ref_s, 1e-7))
    affordable = int(GENERATE_BUDGET_S / (REPEATS * TESTS_PER_LEVEL * max(generate_s, 1e-7)))
    return max(1, min(MAX_BATCH, wanted, affordable))


def build_cases(problem: dict[str, Any]) -> tuple[Reference, list[Case]]:
    ref = Reference(problem)
    scope = enamel_inputs.generator_namespace(problem["prompt"], problem["generator"])
    task_id = problem["task_id"]
    cases: list[Case] = []
    for level in range(1, len(problem["levels"])):
        size = scaled(problem["levels"][level], level)

        def make(cid: int, repeat: int, copies: range, size: int = size, level: int = level) -> list[tuple[Any, ...]]:
            return [enamel_inputs.generate(scope, size, level, cid, input_seed(task_id, level, cid, repeat, c))
                    for c in copies]

        # One input first, to size the batches of this level from its generation and reference times.
        started = time.thread_time()
        probe = make(0, 0, range(1))
        generate_s = time.thread_time() - started
        probe_s, _ = _time_reference(ref, json.dumps({"args": typed_json.encode([list(a) for a in probe])}), 1)
        k = _batch_size(probe_s, generate_s)
        for repeat in range(REPEATS):
            for cid in range(TESTS_PER_LEVEL):
                args = (probe if (repeat, cid) == (0, 0) else make(cid, repeat, range(1))) + make(cid, repeat,
                                                                                                   range(1, k))
                message = {"args": typed_json.encode([list(a) for a in args]), "limit_s": 0.0}
                payload = json.dumps(message)
                ref_s, expected = _time_reference(ref, payload, REF_REPEATS)
                allowance = DECODE_ALLOWANCE * _decode_time(payload) + 0.0005
                cases.append(Case(level, cid, repeat, size, args, message, expected, ref_s, allowance))
    return ref, cases


class EfficiencyServer:
    """What `serve` returns: answers the child's requests, keeps the times and verdicts for the judge."""

    def __init__(self, problem: dict[str, Any]) -> None:
        self.problem = problem
        self.ref, cases = build_cases(problem)
        empty = [Case(0, i, 0, 0, [], {"args": [], "limit_s": 1.0}, [], 0.0, 0.0005) for i in range(CALIBRATIONS)]
        self.cases = empty + cases  # level 0 here: the calibration cases
        per_test = [c.ref_s / c.k for c in cases]
        self.timeout_s = ALPHA * max(per_test) if per_test else 0.0  # ENAMEL's T, per input
        for c in self.cases:
            # The child stops a case itself a little after the limit (it cannot be trusted to, so the
            # verdict below uses this process's clock; the harness's wall-clock limit is the last resort).
            c.message["limit_s"] = round(c.k * (self.timeout_s + TOLERANCE_S) * 1.5 + 0.05, 6)
        self.position = -1  # index of the case in flight
        self.state = "idle"  # idle -> sent (inputs out) -> running (clock on) -> idle
        self.stopped = ""  # why no more cases are sent
        self.sent_at = self.go_at = 0.0
        self.requests = 0

    # -- channel ------------------------------------------------------------------------------------------
    def handle(self, message: Any) -> dict[str, Any]:
        now = descendants_cpu_s()
        self.requests += 1
        op = message.get("op") if isinstance(message, dict) else None
        if op == "go" and self.state == "sent":
            case = self.cases[self.position]
            case.early_s = max(0.0, (now - self.sent_at) - case.allowance_s)
            self.state = "running"
            self.go_at = now
            return {"go": True}
        if op == "answer" and self.state == "running":
            self._finish(self.cases[self.position], message, now - self.go_at)
        elif op != "next" or self.state != "idle":
            self._stop("protocol", f"unexpected message {str(message)[:80]!r} in state {self.state}")
            return {"done": True}
        return self._next()

    def _next(self) -> dict[str, Any]:
        self.state = "idle"
        if self.stopped:
            return {"done": True}
        self.position += 1
        while self.position < len(self.cases) and self._level_out(self.cases[self.position].level):
            self.position += 1
        if self.position >= len(self.cases):
            self.stopped = "complete"
            return {"done": True}
        self.state = "sent"
        self.sent_at = descendants_cpu_s()
        return self.cases[self.position].message

    def _level_out(self, level: int) -> bool:
        return level > 0 and any(c.verdict == "timeout" and c.level <= level for c in self.cases)

    @property
    def overhead_s(self) -> float:
        """The channel's CPU cost of one case (minimum over the calibration cases, capped)."""
        times = [c.time_s for c in self.cases if c.level == 0 and c.time_s is not None]
        return min([MAX_OVERHEAD_S, *times])

    def case_time_s(self, case: Case) -> float:
        return max(0.0, (case.time_s or 0.0) - self.overhead_s)

    def _stop(self, verdict: str, detail: str) -> None:
        if 0 <= self.position < len(self.cases):
            case = self.cases[self.position]
            case.verdict, case.detail = verdict, detail
        self.stopped = verdict

    def _finish(self, case: Case, message: dict[str, Any], window_s: float) -> None:
        case.time_s = window_s + case.early_s
        if case.level == 0:
            if message.get("outputs") == []:
                case.verdict = "ok"
            else:
                self._stop("protocol", "a calibration case (no inputs) must be answered with no outputs")
            return
        if message.get("timeout") or self.case_time_s(case) / case.k > self.timeout_s + TOLERANCE_S:
            case.verdict = "timeout"  # this level and those above count 0; lower levels keep their score
            return
        if "raised" in message:
            self._stop("raised", str(message["raised"])[:500])
            return
        try:
            outputs = typed_json.decode(message.get("outputs"))
        except (ValueError, TypeError, RecursionError) as exc:
            self._stop("protocol", f"outputs not decodable: {exc}")
            return
        if not isinstance(outputs, list) or len(outputs) != case.k:
            self._stop("protocol", f"expected {case.k} outputs, got {str(outputs)[:80]}")
            return
        for i, (args, expected, got) in enumerate(zip(case.args, case.expected, outputs, strict=True)):
            if not self.ref.accepts(args, expected, got):
                case.wrong_index, case.got = i, got
                self._stop("wrong", "")
                return
        case.verdict = "ok"

    # -- results for the judge ----------------------------------------------------------------------------
    def failure(self) -> Case | None:
        """The case that proved the candidate wrong (wrong output, exception, protocol breach), if any."""
        return next((c for c in self.cases if c.verdict in ("wrong", "raised", "protocol")), None)

    def levels(self) -> list[dict[str, Any]]:
        """Per level: size, the reference's and the candidate's time per input (ENAMEL's max over tests),
        eff_L, and whether it timed out or was not reached."""
        rows = []
        timeout = self.timeout_s
        for level in sorted({c.level for c in self.cases if c.level > 0}):
            cases = [c for c in self.cases if c.level == level]
            ref_by_test: dict[int, list[float]] = {}
            ratio_by_test: dict[int, list[float]] = {}
            for c in cases:
                ref_by_test.setdefault(c.cid, []).append(c.ref_s / c.k)
                if c.verdict == "ok" and c.time_s is not None:
                    ratio_by_test.setdefault(c.cid, []).append(self.case_time_s(c) / max(c.ref_s, 1e-9))
            r_level = max(sum(v) / len(v) for v in ref_by_test.values())
            status = "ok"
            if any(c.verdict == "timeout" for c in cases) or self._level_out(level):
                status = "timeout"
            elif len(ratio_by_test) < len(ref_by_test):
                status = "not reached"
            row: dict[str, Any] = {"level": level, "size": cases[0].size, "batch": cases[0].k, "ref_s": r_level,
                                   "status": status, "eff": 0.0, "time_s": None}
            if status == "ok":
                t_level = max(min(ratio_by_test[cid]) * (sum(refs) / len(refs))
                              for cid, refs in ref_by_test.items())
                row["time_s"] = t_level
                row["eff"] = max(0.0, timeout - t_level) / (timeout - r_level) if timeout > r_level else 1.0
            rows.append(row)
        return rows

    def eff(self) -> float:
        rows = self.levels()
        if not rows or self.failure() is not None or self.stopped != "complete":
            return 0.0  # wrong somewhere, or the child stopped asking before every level was measured
        weights = HARDNESS[: len(rows)]
        return sum(w * r["eff"] for w, r in zip(weights, rows, strict=True)) / sum(weights)
