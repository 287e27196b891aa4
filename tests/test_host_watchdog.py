"""The host side of the process sandbox: its watchdog ends a harness that hangs, ignores SIGTERM, or leaves
something behind holding its pipes."""

from __future__ import annotations

import subprocess
import time

import pytest

from evolver.sandbox.process import STDERR_KEEP, STDOUT_CAP, _CappedBuffer, _communicate


def _run(script: str, timeout_s: float):
    proc = subprocess.Popen(["bash", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out, err = _CappedBuffer(cap=STDOUT_CAP), _CappedBuffer(keep=STDERR_KEEP)
    started = time.monotonic()
    status, _usage, timed_out = _communicate(proc, out, err, timeout_s)
    return status, timed_out, out.text(), err.text(), time.monotonic() - started


@pytest.mark.parametrize("script", ["echo partial; sleep 30", "trap '' TERM; echo partial; sleep 30 & wait"])
def test_hanging_harness_is_killed(script: str) -> None:
    _status, timed_out, out, _err, took = _run(script, 0.5)
    assert timed_out and took < 6
    assert out.strip() == "partial"


def test_a_leftover_holding_the_pipes_does_not_block() -> None:
    status, timed_out, out, err, took = _run("echo done; echo oops >&2; (sleep 30 &); exit 3", 20)
    assert not timed_out and took < 4
    assert (out.strip(), err.strip()) == ("done", "oops")
    assert status >> 8 == 3


def test_stderr_keeps_head_and_tail() -> None:
    _status, _timed_out, _out, err, _took = _run("head -c 200000 /dev/zero | tr '\\0' x >&2; echo END >&2", 20)
    assert err.startswith("x" * 100) and err.rstrip().endswith("END") and "bytes omitted" in err
