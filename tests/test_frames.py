"""Traceback frames and profile rows as records, made where the failure happens (the harness's child) and
checked by the trusted side, so that no proposer parses text back. Run for real in the process sandbox.

A frame is {"file": path relative to the candidate root, "line": int, "function": str}; an instance's frames
are those of its failure's traceback that run candidate files, outermost first, innermost last.
"""

from __future__ import annotations

import io
import sqlite3
import tarfile
import textwrap
from pathlib import Path

from evolver import api
from evolver.evaluation import CandidateRef
from evolver.function_eval import FunctionEvaluator
from evolver.store import Store

# f (sol.py) calls into a helper module of the candidate, which raises for x == 7.
SOL = '''
from pkg.helper import inner


def f(x):
    y = inner(x)
    return y * 2
'''
HELPER = '''
def inner(x):
    if x == 7:
        raise ValueError("seven")
    return x
'''


def line_of(source: str, text: str) -> int:
    """The line number of `text` in the file written from `source` (dedented as the task writer does)."""
    lines = textwrap.dedent(source).splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def with_profile(task: Path) -> Path:
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("[evaluate]\n", "[evaluate]\nprofile = true\n"))
    return task


def test_a_raise_in_a_nested_candidate_function_gives_both_frames_innermost_last(make_task, run_eval,
                                                                                 tmp_path) -> None:
    task = make_task(sol=SOL, seed_files={"pkg/__init__.py": "", "pkg/helper.py": HELPER},
                     train=("i1", "i7", "i2"))
    results = run_eval(task)
    assert results["i7"].status == "error" and "ValueError: seven" in results["i7"].feedback
    expected = ({"file": "sol.py", "line": line_of(SOL, "y = inner(x)"), "function": "f"},
                {"file": "pkg/helper.py", "line": line_of(HELPER, "raise ValueError"), "function": "inner"})
    assert results["i7"].frames == expected  # evaluate.py's produce is the task's, not a candidate frame
    assert results["i1"].frames == () and results["i2"].frames == ()
    assert results["i7"].to_json()["frames"] == list(expected)
    # Stored with the evaluation, and the same when served from the cache.
    first = api.evaluate(task, run_dir=tmp_path / "cached")
    again = api.evaluate(task, run_dir=tmp_path / "cached")
    by = {r.instance: r for r in again.results}
    assert by["i7"].cached and by["i7"].frames == expected
    assert {r.instance: r.frames for r in first.results} == {r.instance: r.frames for r in again.results}
    db = sqlite3.connect(tmp_path / "cached" / "run.db")
    assert db.execute("SELECT COUNT(*) FROM evaluations WHERE frames LIKE '%pkg/helper.py%'").fetchone()[0] == 1


def test_a_deep_recursion_keeps_both_ends_of_its_frames(make_task, run_eval) -> None:
    sol = "def f(x):\n    return f(x + 1) if x >= 7 else x * 2\n"
    results = run_eval(make_task(sol=sol, train=("i1", "i7")))
    frames = results["i7"].frames
    assert results["i7"].status == "error" and "RecursionError" in results["i7"].feedback
    assert len(frames) == 32 and all(fr == {"file": "sol.py", "line": 2, "function": "f"} for fr in frames)


def test_profile_rows_say_file_line_and_name(make_task, run_eval) -> None:
    task = with_profile(make_task(sol=SOL, seed_files={"pkg/__init__.py": "", "pkg/helper.py": HELPER},
                                  train=("i1",)))
    rows = run_eval(task)["i1"].profile
    where = {(r["file"], r["name"]): r for r in rows}
    assert where[("sol.py", "f")]["line"] == line_of(SOL, "def f(x)")
    assert where[("pkg/helper.py", "inner")]["line"] == line_of(HELPER, "def inner(x)")
    for r in rows:
        assert r["function"] == f"{r['file']}:{r['line']}({r['name']})"
        assert isinstance(r["line"], int) and not r["file"].startswith("/")


CANDIDATE = '''
def divide(a, b):
    return helper(a, b)


def helper(a, b):
    return a / b
'''
TESTS = '''
from mathy import divide


def test_divide_by_zero():
    assert divide(1, 0) == 0


def test_wrong_answer():
    assert divide(4, 2) == 3


def test_right_answer():
    assert divide(4, 2) == 2
'''


def test_pytest_mode_frames_are_the_candidates_part_of_the_failing_test(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "seed").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "seed" / "mathy.py").write_text(CANDIDATE)
    (root / "tests" / "test_mathy.py").write_text(TESTS)
    (root / "task.toml").write_text('[task]\nmutable = ["mathy.py"]\n[evaluate]\nkind = "pytest"\ntimeout_s = 10\n'
                                    'profile = true\n')
    report = api.evaluate(root, run_dir=tmp_path / "run", use_cache=False)
    by = {r.instance.split("::")[1]: r for r in report.results}
    assert by["test_divide_by_zero"].status == "failed"
    assert by["test_divide_by_zero"].frames == (
        {"file": "mathy.py", "line": line_of(CANDIDATE, "return helper(a, b)"), "function": "divide"},
        {"file": "mathy.py", "line": line_of(CANDIDATE, "return a / b"), "function": "helper"})
    # The assertion failed in the test itself, after the candidate returned: no candidate frame.
    assert by["test_wrong_answer"].status == "failed" and by["test_wrong_answer"].frames == ()
    assert by["test_right_answer"].status == "ok" and by["test_right_answer"].frames == ()
    rows = [row for r in report.results for row in r.profile]
    assert {(row["file"], row["name"]) for row in rows} >= {("mathy.py", "divide"), ("mathy.py", "helper")}


# The candidate writes a failure document of its own making into the result descriptor: frames and profile
# rows of every wrong shape, beside one good frame (i7); a thousand frames (i8); frames that are not a list (i9).
FORGE = '''
import json, os, sys

GOOD = {"file": "sol.py", "line": 3, "function": "f"}
BAD = ["junk", None, 7, [], {"file": "/etc/passwd", "line": 1, "function": "f"},
       {"file": "../outside.py", "line": 1, "function": "f"}, {"file": "sol.py", "line": True, "function": "f"},
       {"file": "sol.py", "line": "3", "function": "f"}, {"file": "sol.py", "line": -1, "function": "f"},
       {"file": "sol.py", "line": 3, "function": "x" * 5000}, {"file": "sol.py", "line": 3, "function": "a\\nb"},
       {"file": "", "line": 3, "function": "f"}, {"file": {"nested": 1}, "line": 3, "function": "f"},
       {"line": 3, "function": "f"}, {"file": "sol.py", "line": 1e300, "function": "f"}]
TIMES = {"ncalls": 1, "primitive_calls": 1, "tottime_s": 0.5, "cumtime_s": 0.5}
PROFILE = [{"function": "lies.py:1(g)", "file": "sol.py", "line": 2, "name": "f", **TIMES},
           {"function": "abs.py:1(f)", "file": "/abs.py", "line": 1, "name": "f", **TIMES},
           {"function": "sol.py:1(f)", **TIMES}, {"file": "sol.py", "line": 4, "name": "f", **TIMES}, "junk",
           {"file": "sol.py", "line": 5, "name": "f", **TIMES, "ncalls": "many"}]


def forge(x):
    frames = {7: BAD + [dict(GOOD, extra="dropped")], 8: [dict(GOOD, line=n) for n in range(1, 1001)]}
    doc = {"ok": False, "kind": "error", "error": "forged", "traceback": "forged",
           "frames": frames.get(x, "not a list"), "profile": PROFILE}
    os.write(int(sys.argv[-1]), json.dumps(doc).encode())
    os._exit(0)


def f(x):
    if x in (7, 8, 9):
        forge(x)
    return x * 2
'''


def test_forged_frames_and_profile_rows_are_dropped_not_fatal(make_task, run_eval, assert_clean_next) -> None:
    task = make_task(sol=FORGE, train=("i1", "i7", "i8", "i9", "i2"))
    results = run_eval(task)
    assert results["i1"].score == 1.0 and results["i2"].score == 1.0
    for i in ("i7", "i8", "i9"):
        assert (results[i].status, results[i].score) == ("error", 0.0), results[i].feedback
    assert results["i7"].frames == ({"file": "sol.py", "line": 3, "function": "f"},)
    eight = results["i8"].frames
    assert len(eight) == 32 and [fr["line"] for fr in eight] == [1, 2, *range(35, 65)]  # of the first 64 read
    assert results["i9"].frames == ()
    # Profile rows are kept for their place and times alone; the display string is rebuilt from the checked
    # parts, so it cannot point elsewhere than they do.
    assert [row["function"] for row in results["i7"].profile] == ["sol.py:2(f)", "sol.py:4(f)"]
    assert_clean_next(task, ("i1", "i2"))


def test_a_function_evaluator_has_no_candidate_frames(tmp_path: Path) -> None:
    # The user's function runs in evolver's own process: its traceback is the user's code, not the candidate's.
    def evaluator(candidate: str, example: int) -> float:
        if example == 2:
            raise ValueError("the user's function failed")
        return 1.0

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("candidate.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"x = 1\n"))
    store = Store(tmp_path / "run.db")
    fe = FunctionEvaluator(evaluator, {"a": 1, "b": 2}, store, "digest", "candidate.txt")
    ref = CandidateRef(sha="s", tree="t", archive=buf.getvalue)
    results = {r.instance: r for r in fe.evaluate(ref, [("a", "train"), ("b", "train")])}
    assert results["b"].status == "error" and "the user's function failed" in results["b"].feedback
    assert results["a"].frames == results["b"].frames == ()
    assert all(row.frames == [] for row in store.cached(fe.cache_key, "t", ["a", "b"]).values())
    store.close()
