"""The interactive session channel: `serve(instance, inputs)` in the trusted harness answers the untrusted
child's `channel.ask(message)` while it runs; the judge sees what the server recorded.

Every test evaluates a real task through the process sandbox. The candidate `sol.f(n, channel)` switches its
behaviour on the instance number n, so one batch mixes well-behaved and hostile children.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SERVING_EVALUATE = '''
from evolver_harness import report

SECRET = "future-availability-s3cr3t"


class Server:
    def __init__(self, n):
        self.n = n
        self.seen = []
        self.secret = SECRET  # what the child must never reach

    def handle(self, message):
        if message == "boom":
            raise RuntimeError("handle broke on purpose")
        if message == "nan":
            return float("nan")
        if message == "huge":
            return "x" * (9 * 1024 * 1024)
        self.seen.append(message)
        return {"step": len(self.seen), "double": message * 2 if isinstance(message, int) else None}


def prepare(instance):
    return {"n": int(instance[1:])}


def serve(instance, inputs):
    if inputs["n"] == 99:
        raise ValueError("serve broke on purpose")
    return Server(inputs["n"])


def produce(inputs, channel):
    import sol
    return sol.f(inputs["n"], channel)


def judge(instance, inputs, output, usage, session):
    seen = session.seen
    if inputs["n"] == 1:
        ok = seen == list(range(50)) and output == [2 * i for i in range(50)]
    elif inputs["n"] == 7:
        ok = output == {"found": []} and seen == ["looked"]
    else:
        ok = output == "ok"
    return report(instance, 1.0 if ok else 0.0, feedback=f"seen {seen[:5]} output {output!r:.200}",
                  requests=len(seen))
'''

HOSTILE_SOL = '''
import gc
import os
import sys
import time


def f(n, channel):
    if n == 1:  # a plain conversation
        return [channel.ask(i)["double"] for i in range(50)]
    if n == 2:  # a line that is not JSON, then waits for a reply that never comes
        os.write(channel._write_fd, b"{not json\\n")
        return channel.ask(0)
    if n == 3:  # closes its end and returns as if done
        channel.ask(0)
        os.close(channel._write_fd)
        return "ok"
    if n == 4:  # closes its end and keeps running
        os.close(channel._write_fd)
        time.sleep(30)
        return "ok"
    if n == 5:  # never asks, never ends: the time limit must still apply while the harness serves
        channel.ask(0)
        while True:
            time.sleep(0.05)
    if n == 6:  # the server raises
        channel.ask("boom")
        return "ok"
    if n == 7:  # looks everywhere in its own process for the server and what it holds
        channel.ask("looked")
        found = []
        for obj in gc.get_objects():
            try:
                if type(obj).__name__ == "Server" or (isinstance(obj, str) and "s3cr3t" in obj
                                                      and "found" not in obj):
                    found.append(repr(obj)[:80])
            except Exception:
                pass
        frame = sys._getframe()
        while frame is not None:
            for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
                if type(value).__name__ == "Server":
                    found.append("frame:" + repr(value)[:80])
            frame = frame.f_back
        return {"found": found}
    if n == 8:  # one message over the size limit, without a newline
        os.write(channel._write_fd, b"[" + b"1," * (4 * 1024 * 1024 + 8))
        return channel.ask(0)
    if n == 9:  # the server replies with something that is not JSON
        channel.ask("nan")
        return "ok"
    if n == 11:  # the server replies with more than a child may read per reply
        channel.ask("huge")
        return "ok"
    return "ok"
'''


def _task(make_task: Callable[..., Path], ids: list[str], timeout_s: float = 2.0) -> Path:
    return make_task(sol=HOSTILE_SOL, evaluate_py=SERVING_EVALUATE, train=ids, timeout_s=timeout_s)


def test_round_trip_and_the_judge_sees_the_record(make_task, run_eval) -> None:
    task = _task(make_task, ["i1", "i10"])
    results = run_eval(task)
    r = results["i1"]
    assert r.status == "ok", r.feedback
    assert r.score == 1.0, r.feedback
    assert r.objectives["requests"] == 50.0
    # A child that never asks is fine too: the judge decides what an empty record means.
    assert results["i10"].status == "ok" and results["i10"].objectives["requests"] == 0.0


def test_garbage_and_early_close_are_candidate_failures(make_task, run_eval, assert_clean_next) -> None:
    task = _task(make_task, ["i2", "i3", "i4", "i8", "i1"])
    results = run_eval(task)
    assert results["i2"].status == "error"
    assert "malformed session message" in results["i2"].feedback
    assert "{not json" in results["i2"].feedback
    assert results["i3"].status == "error"
    assert "closed the session channel before produce returned" in results["i3"].feedback
    assert results["i4"].status == "error"
    assert "closed the session channel and kept running" in results["i4"].feedback
    assert results["i8"].status == "error"
    assert "over the limit" in results["i8"].feedback or "over 8388608 bytes" in results["i8"].feedback
    # The same batch goes on: the well-behaved instance after the hostile ones is unaffected.
    assert results["i1"].status == "ok" and results["i1"].score == 1.0
    assert_clean_next(task, ["i1"])


def test_time_limit_applies_while_serving(make_task, run_eval, assert_clean_next) -> None:
    task = _task(make_task, ["i5", "i1"], timeout_s=1.0)
    results = run_eval(task)
    assert results["i5"].status == "timeout", results["i5"].feedback
    assert "Timed out" in results["i5"].feedback
    assert results["i1"].status == "ok"
    assert_clean_next(task, ["i1"])


def test_server_failures_are_evaluator_errors(make_task, run_eval) -> None:
    task = _task(make_task, ["i6", "i9", "i11", "i99", "i1"])
    results = run_eval(task)
    assert results["i11"].status == "evaluator_error" and "over the limit" in results["i11"].feedback
    assert results["i6"].status == "evaluator_error"
    assert "handle broke on purpose" in results["i6"].feedback
    assert "not the candidate's fault" in results["i6"].feedback
    assert results["i9"].status == "evaluator_error"
    assert "not JSON" in results["i9"].feedback or "Out of range float" in results["i9"].feedback
    assert results["i99"].status == "evaluator_error"
    assert "serve broke on purpose" in results["i99"].feedback
    assert results["i1"].status == "ok"


def test_child_cannot_reach_the_server(make_task, run_eval) -> None:
    results = run_eval(_task(make_task, ["i7"]))
    assert results["i7"].status == "ok", results["i7"].feedback
    assert results["i7"].score == 1.0, results["i7"].feedback


def test_without_serve_produce_takes_inputs_only_and_gets_no_extra_descriptors(make_task, run_eval) -> None:
    # The same fd census in a serving and a plain evaluator: the session adds exactly its two pipe ends.
    census = '''
from evolver_harness import report

class Server:
    def handle(self, message):
        return message

def prepare(instance):
    return {{}}

{serve}

def produce(inputs, *channel):
    import os
    return {{"fds": len(os.listdir("/proc/self/fd")), "args": len(channel)}}

def judge(instance, inputs, output, usage, **session):
    return report(instance, 1.0, fds=output["fds"], args=output["args"], session=len(session))
'''
    plain = run_eval(make_task(evaluate_py=census.format(serve="")))["i1"]
    served = run_eval(make_task(evaluate_py=census.format(
        serve="def serve(instance, inputs):\n    return Server()")))["i1"]
    assert plain.status == "ok" and served.status == "ok", (plain.feedback, served.feedback)
    assert plain.objectives["args"] == 0.0 and plain.objectives["session"] == 0.0
    assert served.objectives["args"] == 1.0 and served.objectives["session"] == 1.0
    assert served.objectives["fds"] == plain.objectives["fds"] + 2
