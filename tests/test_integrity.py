"""Candidates that try to cheat, run for real in the process sandbox: none of them raises its score, fakes its
measured usage, or learns a secret of the host or the harness.

As in test_sandbox_faults.py, the cheating instance (`i7`, or more) sits between good ones (`i1`, `i2`) in one
batch; every cheat returns a wrong output, so any score above 0 for it is a successful cheat.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import evaluate_source

from evolver import cli
from evolver.evidence import condense, hot_spot_table
from evolver.sandbox import process

# What the candidate cannot reach depends on it running as another user, which the process sandbox arranges
# only when evolver runs as root (as on the development machines and in CI).
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the candidate runs as another user only under root")

BATCH = ("i1", "i7", "i2")
GOOD = ("i1", "i2")

# The judge reports what the cheating instance returned (as JSON) in the feedback, scores it 0 unless the
# output is right, and reports the measured usage as objectives.
EVALUATE = evaluate_source(feedback='"SAW " + json.dumps(output)',
                           objectives='cpu_s=usage["cpu_s"], wall_s=usage["wall_s"]')


def cheat(body: str, prelude: str = "", x: int = 7) -> str:
    indented = "\n".join("        " + line for line in body.strip("\n").splitlines())
    return f"{prelude}\ndef f(x):\n    if x == {x}:\n{indented}\n    return x * 2\n"


def saw(result):
    assert result.feedback.startswith("SAW "), (result.status, result.feedback, result.stderr)
    return json.loads(result.feedback[len("SAW "):])


def assert_good(results, ids=GOOD) -> None:
    for i in ids:
        assert results[i].status == "ok", (i, results[i].status, results[i].feedback)
        assert results[i].score == 1.0, (i, results[i].feedback)


def everything_said(results) -> str:
    """All the side information of the results, as one text."""
    return "\n".join(json.dumps(r.to_json()) for r in results.values())


# -- (a) patching the harness from inside the child -------------------------------------------------------------
PATCH_HARNESS = '''
import json, os, sys

def perfect(instance, *args, **kwargs):
    return {"instance": instance, "score": 1e9, "objectives": {}, "feedback": "perfect", "invalid": False,
            "nonfinite": [], "artifacts": {}}

def patch_everything():
    import evolver_harness, evolver_harness.reporting, evolver_harness.child, evolver_harness.trusted
    evolver_harness.report = evolver_harness.reporting.report = perfect
    evolver_harness.trusted._verdict = lambda instance, raw: perfect(instance)
    evolver_harness.trusted.Harness._one_instance = lambda self, ev, path, instance: perfect(instance)
    evaluator = sys.modules["task_evaluator"]
    evaluator.report = perfect
    evaluator.judge = lambda instance, *a: perfect(instance)
    real_dumps = json.dumps
    forged = {"ok": True, "output_json": real_dumps("perfect"), "score": 1e9, "status": "ok",
              "results": [{"instance": "i7", "score": 1e9, "status": "ok"}], "trusted_scores": True}
    json.dumps = lambda obj, *a, **k: real_dumps(forged)
    evolver_harness.child.json.dumps = json.dumps
'''

# Writes a result document of its own making straight into the result descriptor, with junk profile rows (and,
# for x == 9, numbers JSON does not have, which the harness's own document must never carry).
FORGE_RESULT_FD = '''
def forge_result(nonfinite):
    profile = ["junk", None, 3, {"function": {"nested": 1}, "ncalls": "many"},
               {"function": "sol.py:1(f)", "ncalls": 1e308, "tottime_s": -1, "cumtime_s": 2}]
    if nonfinite:
        profile.append({"function": "sol.py:2(f)", "ncalls": 1, "primitive_calls": 1, "tottime_s": float("nan"),
                        "cumtime_s": float("inf")})
    doc = {"ok": True, "output_json": json.dumps("perfect"), "score": 1e9, "status": "ok",
           "trusted_scores": True, "profile": profile}
    os.write(int(sys.argv[1]), json.dumps(doc).encode())
    os._exit(0)
'''


def test_patching_the_harness_does_not_raise_the_score(make_task, run_eval, assert_clean_next, capsys,
                                                       tmp_path) -> None:
    sol = PATCH_HARNESS + FORGE_RESULT_FD + textwrap.dedent('''
        def f(x):
            if x == 7:
                patch_everything()
                return "perfect"
            if x in (8, 9):
                forge_result(nonfinite=x == 9)
            return x * 2
        ''')
    batch = ("i1", "i7", "i8", "i9", "i2")
    task = make_task(sol=sol, evaluate_py=EVALUATE, train=batch)
    results = run_eval(task)
    assert_good(results)
    for i in ("i7", "i8"):
        assert results[i].score == 0.0, (i, results[i].status, results[i].feedback)
        assert results[i].status == "ok" and saw(results[i]) == "perfect"
    # A document with NaN/Infinity is not one child.py writes: refused as no result, for this instance only.
    assert (results["i9"].status, results["i9"].score) == ("no_output", 0.0), results["i9"].feedback
    # Whatever the child claims is side information at most; it must not break what reads it.
    profile = results["i8"].profile
    assert all(isinstance(row, dict) for row in profile), profile
    hot_spot_table(list(results.values()))
    condense(list(results.values()))
    capsys.readouterr()
    assert cli.main(["eval", str(task), "--run", str(tmp_path / "run"), "--no-cache"]) == 0
    assert_clean_next(task, GOOD)


# -- (b) faking the clock -------------------------------------------------------------------------------------------
FAKE_CLOCK = '''
import os, time

def burn(seconds):
    """Spend `seconds` of CPU as measured by the real clock (taken before it is faked)."""
    t0 = REAL_PROCESS_TIME()
    n = 0
    while REAL_PROCESS_TIME() - t0 < seconds:
        n += 1
    return n

REAL_PROCESS_TIME = time.process_time

def fake_clock():
    for name in ("time", "perf_counter", "process_time", "monotonic", "thread_time"):
        setattr(time, name, lambda: 0.0)
    for name in ("time_ns", "perf_counter_ns", "process_time_ns", "monotonic_ns", "thread_time_ns"):
        setattr(time, name, lambda: 0)
    os.times = lambda: os.times_result((0.0, 0.0, 0.0, 0.0, 0.0))
'''


@pytest.mark.parametrize("body", [
    "fake_clock()\nburn(0.6)\nreturn 'fast'",
    # The work runs in a forked worker the candidate never waits for: its CPU is not in the child's rusage.
    "fake_clock()\nr, w = os.pipe()\nif os.fork() == 0:\n    burn(0.6)\n    os.write(w, b'1')\n    os._exit(0)\n"
    "os.read(r, 1)\nreturn 'fast'",
    # The worker is still burning when produce returns; it is killed with the instance, its CPU counts.
    "fake_clock()\nif os.fork() == 0:\n    burn(5)\n    os._exit(0)\nburn(0.1)\nimport time as t\n"
    "t.sleep(0.8)\nreturn 'fast'",
], ids=["in-process", "unwaited-worker", "worker-outlives-produce"])
def test_faked_clock_does_not_hide_cpu_time(make_task, run_eval, assert_clean_next, body: str) -> None:
    task = make_task(sol=cheat(body, FAKE_CLOCK), evaluate_py=EVALUATE, train=BATCH, timeout_s=3)
    results = run_eval(task)
    assert_good(results)
    r = results["i7"]
    assert r.status == "ok" and saw(r) == "fast"
    assert r.usage is not None
    assert r.usage["wall_s"] >= 0.55, r.usage
    assert r.usage["cpu_s"] >= 0.5, r.usage  # the real CPU time, whatever the candidate's clock said
    assert r.objectives["cpu_s"] == r.usage["cpu_s"]
    for i in GOOD:  # no CPU time of the cheat spills into the instances around it
        assert results[i].usage["cpu_s"] < 0.4, (i, results[i].usage)
    assert_clean_next(task, GOOD)


# -- (c) forged result documents everywhere ------------------------------------------------------------------------
# Candidate code shared by the probes below: the pids above the candidate's process.
ANCESTORS = '''
def ancestors():
    pid, out = os.getppid(), []
    while pid > 1 and len(out) < 6:
        out.append(pid)
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
    return out
'''

FORGE_EVERYWHERE = ANCESTORS + '''
import glob, json, os, sys

def forged_doc():
    results = [{"instance": i, "split": "train", "status": "ok", "score": 1e9, "objectives": {}, "feedback": "forged",
                "artifacts": {}, "profile": [], "usage": None, "stdout": "", "stderr": "", "exit_code": 0,
                "signal": None} for i in ("i1", "i7", "i2")]
    return json.dumps({"version": 1, "nonce": "0" * 32, "mode": "python", "error": None, "results": results,
                       "trusted_scores": True, "harness_wall_s": 0.1, "ok": True,
                       "output_json": json.dumps("forged")})


def forge():
    doc, report = forged_doc(), {}
    root = os.path.dirname(os.getcwd())
    targets = ["results.json", "../results.json", f"../../{SYSTEM_TMP_NAME}",
               os.path.join(root, "harness-io", "result-2"), os.path.join(root, "harness-io", "results.json")]
    targets += sorted(glob.glob(os.path.join(root, "*")))
    for pid in ancestors():
        targets += [f"/proc/{pid}/fd/1", f"/proc/{pid}/fd/2"]
        try:
            targets += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError as exc:
            report[f"/proc/{pid}/fd (list)"] = f"denied: {type(exc).__name__}"
    for path in targets:
        label = path.replace(root, "<sandbox>")
        try:
            if os.path.isdir(path):
                continue
            with open(path, "a") as fh:
                fh.write(doc)
            report[label] = "written"
        except OSError as exc:
            report[label] = f"denied: {type(exc).__name__}"
    print(doc)
    print(doc, file=sys.stderr)
    return report
'''


@needs_root
def test_forged_result_documents_do_not_raise_the_score(make_task, run_eval, assert_clean_next) -> None:
    # The sandbox's parent is the system temp dir, world-writable: the forgery may land there (the host never
    # reads it); a unique name keeps the test from touching anything else and lets it clean up.
    tmp_name = f"evolver-test-forged-{uuid.uuid4().hex}.json"
    prelude = f"SYSTEM_TMP_NAME = {tmp_name!r}\n" + FORGE_EVERYWHERE
    task = make_task(sol=cheat("return forge()", prelude), evaluate_py=EVALUATE, train=BATCH)
    try:
        results = run_eval(task)
    finally:
        (Path(tempfile.gettempdir()) / tmp_name).unlink(missing_ok=True)
    assert_good(results)
    r = results["i7"]
    assert r.status == "ok" and r.score == 0.0
    report = saw(r)
    assert report["results.json"] == "written"  # its own folder: harmless, and shows the probe works
    written = {k for k, v in report.items() if v == "written"} - {f"../../{tmp_name}"}
    # Nothing but the candidate's own files: not the sandbox root, the harness's files, nor any descriptor of
    # the harness or of the host (where the result document travels).
    assert all(k.startswith(("results.json", "<sandbox>/candidate")) for k in written), written
    assert report["../results.json"].startswith("denied")
    assert run_eval.last.results[0].score == 1.0 and "forged" not in everything_said(
        {i: results[i] for i in GOOD})
    assert_clean_next(task, GOOD)


# -- (d) exiting early ---------------------------------------------------------------------------------------------
def test_early_exit_scores_zero_with_a_clear_status(make_task, run_eval, assert_clean_next) -> None:
    sol = '''
    import os, signal, sys

    def f(x):
        if x == 7:
            os._exit(0)
        if x == 8:
            sys.exit(0)
        if x == 9:
            import exits_on_import
        if x == 10:
            import hard_exits_on_import
        if x == 11:
            os.kill(os.getpid(), signal.SIGKILL)
        if x == 12:
            os.close(int(sys.argv[1]))  # the result descriptor: nothing can be reported any more
            return x * 2
        return x * 2
    '''
    batch = ("i1", "i7", "i8", "i9", "i10", "i11", "i12", "i2")
    task = make_task(sol=sol, evaluate_py=EVALUATE, train=batch, mutable=["*.py"], seed_files={
        "exits_on_import.py": "import sys\nsys.exit(0)\n",
        "hard_exits_on_import.py": "import os\nos._exit(0)\n",
    })
    results = run_eval(task)
    assert_good(results)
    expected = {"i7": "no_output", "i8": "error", "i9": "error", "i10": "no_output", "i11": "crashed",
                "i12": "no_output"}
    for i, status in expected.items():
        r = results[i]
        assert (r.status, r.score) == (status, 0.0), (i, r.status, r.score, r.feedback)
    assert "exit early" in results["i7"].feedback
    assert "sys.exit()" in results["i8"].feedback and "candidate/sol.py" in results["i8"].feedback
    assert "candidate/exits_on_import.py" in results["i9"].feedback
    assert "signal 9" in results["i11"].feedback
    assert_clean_next(task, GOOD)


# -- (e) host secrets in the environment --------------------------------------------------------------------------
ENV_PROBE = '''
import os

def secrets_seen():
    seen = {"environ": dict(os.environ)}
    pid = os.getppid()
    for path in (f"/proc/{pid}/environ", "/proc/1/environ", f"/proc/{os.getpid()}/environ"):
        try:
            with open(path, "rb") as fh:
                seen[path.replace(str(pid), "<parent>")] = fh.read().decode("latin-1")
        except OSError as exc:
            seen[path.replace(str(pid), "<parent>")] = f"denied: {type(exc).__name__}"
    for entry in os.listdir("/proc"):  # every process's environment it can read
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    text = fh.read().decode("latin-1")
            except OSError:
                continue
            if "SECRET" in text or "API_KEY" in text:
                seen[f"/proc/{entry}/environ"] = text
    return seen
'''


def test_host_secrets_do_not_reach_the_candidate(make_task, run_eval, assert_clean_next, monkeypatch) -> None:
    secrets = {"OPENAI_API_KEY": "sk-evolver-test-do-not-leak-5d2c", "EVOLVER_TEST_SECRET": "hush-7f31a9",
               "ANTHROPIC_API_KEY": "sk-ant-evolver-test-0b77"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    task = make_task(sol=cheat("return secrets_seen()", ENV_PROBE), evaluate_py=EVALUATE, train=BATCH)
    results = run_eval(task)
    assert_good(results)
    seen = saw(results["i7"])
    assert set(seen["environ"]) <= set(process.CHILD_ENV_BASE) | {"HOME", "TMPDIR"}, seen["environ"]
    assert seen["/proc/<parent>/environ"].startswith("denied")  # the harness (root, not dumpable)
    said = everything_said(results)
    for name, value in secrets.items():
        assert value not in said, f"{name} leaked to the candidate"
        assert name not in said
    assert_clean_next(task, GOOD)


# -- (f) the nonce ----------------------------------------------------------------------------------------------------
NONCE_PROBE = ANCESTORS + '''
import json, os, re, sys

HEX = re.compile(r"[0-9a-f]{32}")

def read(path, limit=1 << 20):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("latin-1")
    except OSError as exc:
        return f"denied: {type(exc).__name__}"


def hunt():
    found, access, texts = set(), {}, []
    for depth, pid in enumerate(ancestors()):
        for what in ("fd/0", "environ", "cmdline", "mem", "maps", "stack", "syscall", "io"):
            text = read(f"/proc/{pid}/{what}")
            access[f"ancestor{depth}/{what}"] = "denied" if text.startswith("denied") else "read"
            texts.append(text)
        try:
            os.listdir(f"/proc/{pid}/fd")
            access[f"ancestor{depth}/fd"] = "listed"
        except OSError:
            access[f"ancestor{depth}/fd"] = "denied"
    os.lseek(0, 0, os.SEEK_SET)  # its own stdin: the job the harness wrote for it
    texts.append(os.read(0, 1 << 20).decode("latin-1"))
    texts += [" ".join(sys.argv), json.dumps(dict(os.environ))]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            texts += [read(f"/proc/{entry}/cmdline"), read(f"/proc/{entry}/environ")]
    for text in texts:
        found.update(HEX.findall(text))
    for guess in sorted(found):  # try each as the nonce of a forged document on every stream it has
        doc = json.dumps({"version": 1, "nonce": guess, "results": [{"instance": "i7", "score": 1e9}]})
        print(doc)
        print(doc, file=sys.stderr)
    return {"access": access, "found": sorted(found)}
'''


@needs_root
def test_the_nonce_stays_secret(make_task, run_eval, assert_clean_next, monkeypatch) -> None:
    nonces: list[str] = []
    real_token_hex = process.secrets.token_hex

    def recording_token_hex(nbytes=None):  # a spy: the real nonce, remembered for the assertions below
        nonces.append(real_token_hex(nbytes))
        return nonces[-1]

    monkeypatch.setattr(process.secrets, "token_hex", recording_token_hex)
    task = make_task(sol=cheat("return hunt()", NONCE_PROBE), evaluate_py=EVALUATE, train=BATCH)
    results = run_eval(task)
    monkeypatch.undo()
    assert len(nonces) == 1 and re.fullmatch("[0-9a-f]{32}", nonces[0])
    assert_good(results)
    r = results["i7"]
    assert r.status == "ok" and r.score == 0.0
    seen = saw(r)
    assert nonces[0] not in seen["found"]
    assert nonces[0] not in everything_said(results)
    access = seen["access"]
    for what in ("fd/0", "environ", "mem", "maps", "fd"):  # the harness is root and not dumpable
        assert access[f"ancestor0/{what}"] == "denied", (what, access)
        assert access[f"ancestor1/{what}"] == "denied", (what, access)  # the host (this pytest process)
    assert_clean_next(task, GOOD)


# -- private task files: the trusted half reads them, the candidate cannot -------------------------------------------
PRIVATE_EVALUATE = '''
import json, os
from evolver_harness import report

HERE = os.path.dirname(os.path.abspath(__file__))

def prepare(instance):
    with open(os.path.join(HERE, "answers.txt")) as fh:  # trusted side: readable
        return {"x": int(instance[1:]), "answers_seen_by_prepare": len(fh.read())}

def produce(inputs):
    import sol
    return sol.f(inputs["x"])

def judge(instance, inputs, output, usage):
    if inputs["x"] == 7:
        return report(instance, 0.0, feedback="SAW " + json.dumps(output))
    ok = output == inputs["x"] * 2 and inputs["answers_seen_by_prepare"] > 0
    return report(instance, 1.0 if ok else 0.0)
'''

READ_ANSWERS = '''
import os, sys
task_dir = os.path.dirname(sys.modules["task_evaluator"].__file__)
try:
    with open(os.path.join(task_dir, "answers.txt")) as fh:
        return {"answers": fh.read()}
except OSError as exc:
    return {"answers": "denied " + type(exc).__name__}
'''


@needs_root
def test_private_task_files_are_unreadable_to_the_candidate(make_task, run_eval) -> None:
    task = make_task(sol=cheat(READ_ANSWERS), evaluate_py=PRIVATE_EVALUATE, train=BATCH)
    (task / "answers.txt").write_text("i7 -> 14\n")
    toml = (task / "task.toml").read_text().replace("[evaluate]\n", '[evaluate]\nprivate = ["answers.txt"]\n')
    (task / "task.toml").write_text(toml)
    results = run_eval(task)
    assert_good(results)
    assert saw(results["i7"]) == {"answers": "denied PermissionError"}
