"""Faulty candidates run for real in the process sandbox: each fault gets its status, the good instances of the
same batch still score, nothing of the candidate survives the evaluation, and the next evaluation is clean.

Every task here puts the faulty instance (`i7`, or more) between good ones (`i1` before, `i2` after) in one
batch (workers = 1), so a fault that leaks into the rest of the batch shows up as a wrong score there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import evaluate_source
from evolver_harness import spawn

from evolver import cli

# What the candidate cannot reach depends on it running as another user, which the process sandbox arranges
# only when evolver runs as root (as on the development machines and in CI).
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the candidate runs as another user only under root")

BATCH = ("i1", "i7", "i2")
GOOD = ("i1", "i2")

# An evaluator for probes: the faulty instance returns what it observed and the judge puts it, as JSON, in
# the feedback, so the test can read what the candidate could and could not do.
PROBE_EVALUATE = '''
import json
from evolver_harness import report

def prepare(instance):
    return {"x": int(instance[1:])}

def produce(inputs):
    import sol
    return sol.f(inputs["x"])

def judge(instance, inputs, output, usage):
    if inputs["x"] == 7:
        return report(instance, 0.0, feedback="PROBE " + json.dumps(output))
    ok = output == inputs["x"] * 2
    return report(instance, 1.0 if ok else 0.0, feedback="" if ok else f"wrong: {output!r}")
'''


def faulty(body: str, prelude: str = "") -> str:
    """A candidate that runs `body` for x == 7 and is correct otherwise."""
    indented = "\n".join("        " + line for line in body.strip("\n").splitlines())
    return f"{prelude}\ndef f(x):\n    if x == 7:\n{indented}\n    return x * 2\n"


def probe_output(result) -> dict:
    assert result.feedback.startswith("PROBE "), (result.status, result.feedback, result.stderr)
    return json.loads(result.feedback[len("PROBE "):])


def assert_good(results, ids=GOOD) -> None:
    for i in ids:
        assert results[i].status == "ok", (i, results[i].status, results[i].feedback)
        assert results[i].score == 1.0, (i, results[i].feedback)


# -- (a) a candidate that does not import ------------------------------------------------------------------------
def test_candidate_module_with_syntax_error(make_task, run_eval, assert_clean_next) -> None:
    task = make_task(sol="def f(x)\n    return x * 2\n", train=BATCH)
    results = run_eval(task)
    for i in BATCH:
        assert results[i].status == "error", (i, results[i].status)
        assert results[i].score == 0.0
        assert "SyntaxError" in results[i].feedback
        assert "candidate/sol.py" in results[i].feedback  # relabelled: no sandbox path in the side information
        assert "evolver-sbx-" not in results[i].feedback
    assert_clean_next(make_task(train=GOOD), GOOD)


def test_candidate_modules_that_fail_to_import(make_task, run_eval, assert_clean_next) -> None:
    sol = '''
    def f(x):
        if x == 7:
            import broken
        if x == 8:
            import helper_with_missing_dependency
        return x * 2
    '''
    task = make_task(sol=sol, train=("i1", "i7", "i8", "i2"), mutable=["*.py"], seed_files={
        "broken.py": "def oops(:\n    pass\n",
        "helper_with_missing_dependency.py": "import no_such_module_for_evolver_tests\n",
    })
    results = run_eval(task)
    assert_good(results)
    assert results["i7"].status == "error" and results["i7"].score == 0.0
    assert "SyntaxError" in results["i7"].feedback and "candidate/broken.py" in results["i7"].feedback
    assert results["i8"].status == "error" and results["i8"].score == 0.0
    assert "ModuleNotFoundError" in results["i8"].feedback
    assert "no_such_module_for_evolver_tests" in results["i8"].feedback
    assert "candidate/helper_with_missing_dependency.py" in results["i8"].feedback
    assert_clean_next(task, GOOD)


# -- (b) produce raises -----------------------------------------------------------------------------------------
def test_candidate_raises(make_task, run_eval, assert_clean_next) -> None:
    task = make_task(sol=faulty("raise ValueError('bad pivot 42')"), train=BATCH)
    results = run_eval(task)
    assert_good(results)
    r = results["i7"]
    assert r.status == "error" and r.score == 0.0
    assert "ValueError: bad pivot 42" in r.feedback
    assert 'File "candidate/sol.py", line 4, in f' in r.feedback
    assert "evolver_harness" not in r.feedback  # the harness's own frames are noise to the reader
    assert_clean_next(task, GOOD)


# -- (c), (d) endless loops ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("body", [
    "while True:\n    pass",
    "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
    "import time\nwhile True:\n    time.sleep(0.01)",  # no CPU spent: only the wall clock can catch it
], ids=["busy", "ignores-sigterm", "sleeping"])
def test_endless_loop_times_out(make_task, run_eval, assert_clean_next, body: str) -> None:
    task = make_task(sol=faulty(body), train=BATCH, timeout_s=1)
    started = time.monotonic()
    results = run_eval(task)
    elapsed = time.monotonic() - started
    assert_good(results)
    r = results["i7"]
    assert r.status == "timeout" and r.score == 0.0
    assert "Timed out" in r.feedback
    assert r.usage is not None and 0.9 <= r.usage["wall_s"] < 1 + spawn.TERM_GRACE_S + 1.0
    assert elapsed < 8, f"the evaluation took {elapsed:.1f} s with a 1 s time limit"
    assert_clean_next(task, GOOD)


# -- (e) memory ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    "b = bytearray(10 * 1024 ** 3)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 6))",
], ids=["10GB-at-once", "gradual"])
def test_memory_hog_is_stopped(make_task, run_eval, assert_clean_next, body: str) -> None:
    task = make_task(sol=faulty(body), train=BATCH, memory_mb=256)
    results = run_eval(task)
    assert_good(results)
    r = results["i7"]
    assert r.status == "memory" and r.score == 0.0, (r.status, r.feedback, r.stderr)
    assert "256 MB" in r.feedback
    assert r.usage is not None and r.usage["peak_rss_mb"] < 300
    assert_clean_next(task, GOOD)


# -- (f) output flood ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, expected", [
    ("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2 ** 20)", "output_limit"),
    ("import sys\nfor _ in range(1024):\n    sys.stderr.write('y' * 2 ** 20)", "output_limit"),
    # Ignores the write errors and goes on: still contained, and it does return its (correct) output.
    ("import os\nfor _ in range(1024):\n    try:\n        os.write(1, b'z' * 2 ** 20)\n    except OSError:\n"
     "        pass\nreturn 14", "ok"),
], ids=["stdout", "stderr", "ignores-EFBIG"])
def test_output_flood_is_capped(make_task, run_eval, assert_clean_next, body: str, expected: str) -> None:
    task = make_task(sol=faulty(body), train=BATCH, output_limit_mb=4)
    started = time.monotonic()
    results = run_eval(task)
    assert time.monotonic() - started < 10
    assert_good(results)
    r = results["i7"]
    assert r.status == expected, (r.status, r.feedback)
    if expected == "output_limit":
        assert r.score == 0.0 and "output limit (4 MB)" in r.feedback
    # The side information keeps only the head and tail of what was written.
    for text in (r.stdout, r.stderr):
        assert len(text) < 3 * 4096 + 200
    flooded = r.stderr if "stderr" in body else r.stdout
    assert "bytes omitted" in flooded
    assert_clean_next(task, GOOD)


# -- (g) fork bomb ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("body", [
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    # Each process leaves the group (killpg no longer reaches it) and ignores SIGTERM.
    "import os, signal\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
    "            signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    except OSError:\n        pass",
], ids=["plain", "setsid-ignoring-sigterm"])
def test_fork_bomb_is_contained(make_task, run_eval, assert_clean_next, leftovers, body: str) -> None:
    task = make_task(sol=faulty(body), train=BATCH, timeout_s=1, max_processes=32)
    started = time.monotonic()
    results = run_eval(task)
    assert time.monotonic() - started < 10
    assert_good(results)
    r = results["i7"]
    assert r.status in ("timeout", "error"), (r.status, r.feedback)
    assert r.score == 0.0
    left = leftovers()
    assert not left, f"fork bomb survivors: {[(p.pid, p.info['cmdline']) for p in left]}"
    # The host is fine: it can still start processes, and the next evaluation is clean.
    assert subprocess.run(["true"], check=False).returncode == 0
    assert_clean_next(task, GOOD)


# Parallel batches run their candidates under different uids: one cannot starve or kill another.


@pytest.mark.slow
@needs_root
def test_fork_bomb_does_not_starve_parallel_batches(make_task, run_eval) -> None:
    # The bomb waits for the other batches' children to start (their process budget is counted then), and
    # they start a legitimate helper process while it runs.
    sol = faulty("time.sleep(0.2)\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                 "import os, subprocess, time") + textwrap.dedent('''
        _f = f

        def f(x):
            if x != 7:
                time.sleep(0.5)
                subprocess.run(["true"], check=True)
            return _f(x)
        ''')
    task = make_task(sol=sol, train=("i7", "i1", "i2", "i3"), timeout_s=1, max_processes=32, workers=4)
    results = run_eval(task)
    assert results["i7"].status == "timeout"
    assert_good(results, ("i1", "i2", "i3"))


@needs_root
def test_a_batch_cannot_kill_a_parallel_batch(make_task, run_eval) -> None:
    body = '''
    time.sleep(0.5)  # the parallel batches' children are running by now
    # The sandboxes of this evaluation are named after the evolver process: kill only their children (not
    # kill(-1), which would hit every process of the user on this machine, other evaluations included).
    mine = os.path.basename(os.path.dirname(os.getcwd())).rsplit("-", 1)[0] + "-"
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                if b"run_child.py" in fh.read() and int(p) != os.getpid() and mine in os.readlink(f"/proc/{p}/cwd"):
                    os.kill(int(p), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    '''
    sol = faulty(textwrap.dedent(body), "import os, signal, time").replace(
        "    return x * 2", "    time.sleep(1.5)\n    return x * 2")
    task = make_task(sol=sol, train=("i7", "i1", "i2", "i3"), timeout_s=3, workers=4)
    results = run_eval(task)
    assert_good(results, ("i1", "i2", "i3"))


# -- (h) writes outside the candidate's folder ----------------------------------------------------------------------
WRITE_PROBE = '''
import json, os, sys

def attempt(path, mode):
    """'create' makes a new file; 'append' opens an existing one for writing and writes nothing."""
    try:
        if mode == "create":
            with open(path, "x") as fh:
                fh.write("pwned")
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        return "written"
    except OSError as exc:
        return f"denied: {type(exc).__name__}"

def probe():
    import evolver_harness
    task_dir = os.path.dirname(sys.modules["task_evaluator"].__file__)
    harness_dir = os.path.dirname(evolver_harness.__file__)
    sandbox_root = os.path.dirname(os.getcwd())
    targets = {
        "own_dir": (os.path.join(os.getcwd(), "scribble.txt"), "create"),
        "task_copy_new": (os.path.join(task_dir, "pwned.txt"), "create"),
        "task_copy_evaluator": (os.path.join(task_dir, "evaluate.py"), "append"),
        "harness_new": (os.path.join(harness_dir, "pwned.py"), "create"),
        "harness_reporting": (os.path.join(harness_dir, "reporting.py"), "append"),
        "sandbox_root": (os.path.join(sandbox_root, "pwned.txt"), "create"),
        "harness_io": (os.path.join(sandbox_root, "harness-io", "pwned.txt"), "create"),
        "host_tmp_path": (HOST_TMP_TARGET, "create"),
        "host_task_dir": (HOST_TASK_TARGET, "create"),
        "host_run_dir": (HOST_RUN_TARGET, "create"),
        "host_run_db": (HOST_RUN_DB, "append"),
        "tmp": (TMP_TARGET, "create"),
    }
    return {name: attempt(path, mode) for name, (path, mode) in targets.items()}
'''


@needs_root
def test_writes_outside_the_candidate_folder_do_not_land(make_task, run_eval, assert_clean_next,
                                                         tmp_path: Path) -> None:
    harness_dir = Path(spawn.__file__).resolve().parent
    harness_before = {p.name: p.read_bytes() for p in harness_dir.iterdir() if p.is_file()}
    task_dir = tmp_path / "task0"  # the first task make_task writes
    run_dir = tmp_path / "run"
    tmp_target = Path("/tmp") / f"evolver-test-{uuid.uuid4().hex}"
    constants = {
        "HOST_TMP_TARGET": tmp_path / "host-target.txt", "HOST_TASK_TARGET": task_dir / "pwned.txt",
        "HOST_RUN_TARGET": run_dir / "pwned.txt", "HOST_RUN_DB": run_dir / "run.db", "TMP_TARGET": tmp_target,
    }
    prelude = "".join(f"{k} = {str(v)!r}\n" for k, v in constants.items()) + WRITE_PROBE
    task = make_task(sol=faulty("return probe()", prelude), evaluate_py=PROBE_EVALUATE, train=BATCH)
    assert task == task_dir
    try:
        results = run_eval(task, run_dir=run_dir)
        assert_good(results)
        seen = probe_output(results["i7"])
        assert seen.pop("own_dir") == "written"  # the probe works: the candidate may write its own folder
        # World-writable /tmp is not isolated by the process backend (no filesystem namespace): whatever
        # happened there is allowed, and cleaned up below.
        seen.pop("tmp")
        assert all(v.startswith("denied") for v in seen.values()), seen
        for name in ("HOST_TMP_TARGET", "HOST_TASK_TARGET", "HOST_RUN_TARGET"):
            assert not Path(constants[name]).exists(), name
        assert {p.name: p.read_bytes() for p in harness_dir.iterdir() if p.is_file()} == harness_before
    finally:
        tmp_target.unlink(missing_ok=True)
    assert_clean_next(task, GOOD)


# -- (i) a daemon that would outlive the instance ------------------------------------------------------------------
DAEMON = '''
import os, signal, time

def daemonize(heartbeat, exec_argv=None):
    """Double fork + setsid; returns the daemon's pid. The daemon ignores SIGTERM and beats forever."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid:
            os.write(w, str(pid).encode())
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for fd in (0, 1, 2):
            os.close(fd)
        if exec_argv:
            os.execv(exec_argv[0], exec_argv)
        while True:
            with open(heartbeat, "a") as fh:
                fh.write(".")
            time.sleep(0.02)
    os.close(w)
    pid = int(os.read(r, 32))
    os.waitpid(-1, 0)  # the intermediate child: the daemon is now an orphan
    return pid
'''


@pytest.mark.slow
def test_background_daemon_does_not_outlive_the_instance(make_task, run_eval, assert_clean_next) -> None:
    since = time.time()
    tag = uuid.uuid4().hex
    heartbeat = Path("/tmp") / f"evolver-test-heartbeat-{tag}"
    sleep_arg = f"{4000 + int(tag[:4], 16) % 1000}.{int(tag[4:8], 16)}"  # a sleep nobody else runs
    body = (f"a = daemonize({str(heartbeat)!r})\n"
            f"b = daemonize(None, [{shutil.which('sleep')!r}, {sleep_arg!r}])\n"
            "time.sleep(0.3)\n"
            "return [a, b]")
    task = make_task(sol=faulty(body, DAEMON), evaluate_py=PROBE_EVALUATE, train=BATCH)
    try:
        results = run_eval(task)
        assert_good(results)
        pids = probe_output(results["i7"])
        assert len(pids) == 2
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE \
                or psutil.Process(pid).create_time() < since - 1, f"daemon {pid} survived"
        assert not [p for p in psutil.process_iter(["cmdline"]) if sleep_arg in (p.info["cmdline"] or [])]
        assert heartbeat.exists(), "the daemon never ran: the probe is broken"
        size = heartbeat.stat().st_size
        time.sleep(0.3)
        assert heartbeat.stat().st_size == size, "the daemon still beats after the evaluation"
    finally:
        heartbeat.unlink(missing_ok=True)
    assert_clean_next(task, GOOD)


# -- (j) bytes that are not UTF-8, terminal escapes, lone surrogates --------------------------------------------------
# Echoes the output as it is (not repr): a judge may well do so.
HOSTILE_TEXT_EVALUATE = evaluate_source(feedback='f"wrong: {output}"', objectives="")

HOSTILE_SOL = r'''
import sys

def f(x):
    if x == 7:  # raw bytes that are not UTF-8, and terminal escapes, on both streams; a correct result
        sys.stdout.flush()
        sys.stdout.buffer.write(b"\xff\xfe\x80 out \x1b[31mred\x1b[0m \x1b]0;title\x07\n")
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(b"\xc3\x28 err \x1b[2J\x1b[H\n")
        sys.stderr.buffer.flush()
    if x == 8:  # an exception whose message has a lone surrogate and an escape (JSON can carry both)
        raise ValueError("bad \ud800 value \x1b[2J")
    if x == 9:  # an output with the same, echoed by the judge
        return "half \udfff pair \x1b[31m"
    return x * 2
'''


def test_hostile_text_is_replaced_not_fatal(make_task, run_eval, assert_clean_next, capsys, tmp_path) -> None:
    batch = ("i1", "i7", "i8", "i9", "i2")
    task = make_task(sol=HOSTILE_SOL, evaluate_py=HOSTILE_TEXT_EVALUATE, train=batch)
    results = run_eval(task)
    assert_good(results, (*GOOD, "i7"))
    assert "\ufffd" in results["i7"].stdout and "out" in results["i7"].stdout
    assert "\ufffd" in results["i7"].stderr and "err" in results["i7"].stderr
    assert results["i8"].status == "error" and results["i8"].score == 0.0
    assert "bad \ufffd value" in results["i8"].feedback
    assert results["i9"].status == "ok" and results["i9"].score == 0.0
    assert "half \ufffd pair" in results["i9"].feedback
    for r in results.values():  # everything is storable, printable text
        for text in (r.feedback, r.stdout, r.stderr):
            text.encode("utf-8")
    # The CLI shows the side information with the escapes made visible, never raw.
    capsys.readouterr()
    code = cli.main(["eval", str(task), "--run", str(tmp_path / "run"), "--no-cache", "--verbose"])
    out = capsys.readouterr().out
    assert code == 0
    assert "\x1b" not in out and "\\x1b" in out
    assert_clean_next(task, GOOD)


# -- the docker suite's remaining attacks, where they apply to the process backend ---------------------------------
@needs_root
@pytest.mark.parametrize("body", [
    # zombies: children that exit and are never waited for
    "import os\nfor _ in range(20):\n    if os.fork() == 0:\n        os._exit(0)",
    # the harness (its parent) and everything else it may signal
    "import os, signal\nfor pid in (os.getppid(), -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
    "    except OSError:\n        pass",
], ids=["zombies", "kill-the-harness"])
def test_zombies_and_signals_leave_the_batch_intact(make_task, run_eval, assert_clean_next, body: str) -> None:
    task = make_task(sol=faulty(body), train=BATCH)
    results = run_eval(task)
    assert_good(results)
    assert results["i7"].status == "ok", (results["i7"].status, results["i7"].feedback)
    assert_clean_next(task, GOOD)


def test_a_five_gigabyte_file_stops_at_the_size_limit(make_task, run_eval, assert_clean_next) -> None:
    body = ("chunk = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as fh:\n    for _ in range(5 * 1024):\n"
            "        fh.write(chunk)")
    task = make_task(sol=faulty(body), train=BATCH, output_limit_mb=4)
    results = run_eval(task)
    assert_good(results)
    r = results["i7"]
    assert r.status == "output_limit" and r.score == 0.0, (r.status, r.feedback)
    assert_clean_next(task, GOOD)


@needs_root
def test_two_evolver_processes_never_share_candidate_uids() -> None:
    # A holder takes every free uid block but one; an evolver process started meanwhile must get that one,
    # whatever its pid (before, the block was pid % 10000, so two processes could collide).
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent('''
        import fcntl, resource, sys
        from evolver.sandbox.process import UID_BLOCKS, UID_LOCK_DIR
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per block held
        UID_LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        held = []
        for k in range(UID_BLOCKS):
            try:
                f = open(UID_LOCK_DIR / f"{k}.lock", "a")
            except OSError:  # out of descriptors: this machine cannot stage the test
                print(-1, flush=True)
                sys.exit(0)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another evolver process's (this test's, say)
                f.close()
                continue
            held.append((k, f))
        free, f = held.pop(len(held) // 2)  # leave exactly one block free
        f.close()
        print(free, flush=True)
        sys.stdin.read()
        ''')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        free = int(holder.stdout.readline())
        if free < 0:
            pytest.skip("not enough file descriptors to hold every uid block")
        out = subprocess.run([sys.executable, "-c", "from evolver.sandbox.process import slot_uid; print(slot_uid(3))"],
                             capture_output=True, text=True, check=True).stdout
        from evolver.sandbox.process import UID_BASE, UID_SLOTS
        assert int(out) == UID_BASE + free * UID_SLOTS + 3
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
