"""The builtin (LLM-free) proposer: every mutation kind, determinism, evidence focus, noop, memory of outcomes,
the jobshop seed."""

from __future__ import annotations

import ast
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from evolver.evaluation import InstanceResult
from evolver.evidence import gather
from evolver.lessons import Lesson, relevant
from evolver.proposers.base import ParentInfo, ProposalContext, TriedAttempt
from evolver.proposers.builtin import BuiltinProposer, Preferences, mutate_source, read_evidence, read_preferences
from evolver.task import Task, load_task

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "tasks/jobshop/seed/dispatch.py").read_text()
FEATURES = ["duration", "work_remaining", "ops_remaining", "job_work_total", "job_ready", "time",
            "machine_load_remaining", "next_duration", "next_machine_load", "next_machine_ready"]
SAMPLE = dict(zip(FEATURES, [7, 40, 3, 90, 12, 20, 130, 5, 60, 25], strict=True))

RICH = '''"""A module with something for every mutation kind."""
LIMIT = 10


def score(a, b, c=2.5):
    """Doc."""
    total = 0
    for i in range(a):
        if i % 2 == 0:
            total += b * i
        else:
            total -= c
    bonus = total / 4 if total > 0 else -1.5
    if total >= LIMIT:
        bonus = bonus * 2
    return total + bonus
'''

# Two functions; the feedback's traceback points only at `slow`.
TWO = '''def fast(x, y):
    z = x * 2
    return z + y


def slow(n, m):
    acc = 0
    for k in range(n):
        acc = acc + k * m
    if acc > 100:
        acc = acc - 1
    return acc
'''
TRACEBACK = ('Traceback (most recent call last):\n  File "evaluate.py", line 40, in produce\n'
             '  File "candidate/work.py", line 9, in slow\nZeroDivisionError: division by zero')
# What the harness reports beside that text: the frames in candidate files, innermost last.
FRAMES = ({"file": "work.py", "line": 9, "function": "slow"},)

KIND_OF = {"perturb": "perturb", "swap operator": "swap_op", "swap comparison": "swap_op", "replace": "replace",
           "combine": "combine", "negate": "branch", "swap if/else": "branch", "swap branches": "branch",
           "drop": "statement", "duplicate": "statement"}


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(ROOT / "tasks/jobshop")


def _ctx(task: Task, files: dict[str, str], results: list[InstanceResult] | None = None,
         tried: tuple[TriedAttempt, ...] = (), lessons: tuple[Lesson, ...] = ()) -> ProposalContext:
    parent = ParentInfo(sha="0" * 40, label="seed", files={p: t.encode() for p, t in files.items()}, texts=files,
                        results=tuple(results or ()))
    return ProposalContext(task=task, parents=(parent,), evidence=gather(results or ()), lessons=lessons,
                           tried=tried)


def _tried(change: str, reason: str = "worse", proposer: str = "builtin") -> TriedAttempt:
    return TriedAttempt(proposer=proposer, operator="", change=change, reason=reason)


def _lessons(*outcomes: tuple[str, str, str, str], proposer: str = "builtin") -> tuple[Lesson, ...]:
    """The lesson records the engine hands a proposer, for (outcome, reason, operator, change), oldest first."""
    log = [Lesson(task="t", run="r", iteration=i, parent="p", child="c", files=("f.py",), failure_kinds=(),
                  diagnosis="no failing instances; exploring", change=change, outcome=outcome, reason=reason,
                  delta=0.01 if outcome == "accepted" else -0.01, proposer=proposer, operator=operator)
           for i, (outcome, reason, operator, change) in enumerate(outcomes)]
    return relevant(log, ["f.py"], [])


def _r(status: str, feedback: str = "", profile: tuple = (), frames: tuple = ()) -> InstanceResult:
    return InstanceResult(instance="ta01", split="train", status=status, score=0.0 if status != "ok" else 0.8,
                          objectives={}, feedback=feedback, profile=profile, frames=frames)


def _labels(desc: str) -> set[str]:
    return {label for prefix, label in KIND_OF.items() if desc.startswith(prefix)}


def test_every_kind_occurs_and_parses() -> None:
    labels: Counter[str] = Counter()
    prefixes: set[str] = set()
    for seed in range(400):
        got = mutate_source(RICH, random.Random(seed))
        assert got is not None
        new, desc = got
        assert new != RICH
        ast.parse(new)
        assert "\n" not in desc and "(line " in desc
        assert len(_labels(desc)) == 1, desc
        labels.update(_labels(desc))
        prefixes.update(p for p in KIND_OF if desc.startswith(p))
        # the last return of a function returning a value is never dropped
        assert "return" in new
    assert set(labels) == {"perturb", "swap_op", "replace", "combine", "branch", "statement"}
    assert {"negate", "swap if/else", "swap branches", "drop", "duplicate", "swap operator",
            "swap comparison"} <= prefixes


def test_int_constants_stay_ints_mostly_and_no_division_by_literal_zero() -> None:
    src = "def f(x):\n    return range(x + 3)\n"
    for seed in range(60):
        got = mutate_source(src, random.Random(seed))
        assert got is not None
        assert "/ 0\n" not in got[0]
    outs = [mutate_source("N = 4\n", random.Random(s)) for s in range(30)]
    assert all(o is not None and "." not in o[0] for o in outs)  # module-level int, not in arithmetic: int
    for seed in range(100):
        got = mutate_source("def f(x):\n    return x - 0\n", random.Random(seed))
        assert got is not None and "/ 0" not in got[0]


def test_deterministic_for_a_seed(task: Task) -> None:
    for seed in (1, 7, 42):
        assert mutate_source(RICH, random.Random(seed)) == mutate_source(RICH, random.Random(seed))
        a = BuiltinProposer().propose(_ctx(task, {"dispatch.py": SEED}), random.Random(seed))
        b = BuiltinProposer().propose(_ctx(task, {"dispatch.py": SEED}), random.Random(seed))
        assert a == b and a.ok


def test_focus_on_the_function_of_the_traceback(task: Task) -> None:
    results = [_r("error", TRACEBACK, frames=FRAMES), _r("ok", "makespan 1400")]
    ctx = _ctx(task, {"work.py": TWO}, results)
    proposer = BuiltinProposer()
    where = Counter()
    for seed in range(100):
        p = proposer.propose(ctx, random.Random(seed))
        assert p.ok, p
        assert p.diagnosis.startswith("traceback in slow (work.py:9)")
        where["slow" if " in slow " in p.change else "other"] += 1
        ast.parse(p.changes["work.py"])
    assert where["slow"] >= 75, where
    # the named line is preferred too
    on_line = sum(" (line 9)" in proposer.propose(ctx, random.Random(s)).change for s in range(100))
    assert on_line >= 30


def test_profile_hot_spot_guides_without_failures(task: Task) -> None:
    profile = ({"function": "work.py:6(slow)", "file": "work.py", "line": 6, "name": "slow", "ncalls": 1,
                "tottime_s": 0.5, "cumtime_s": 0.9},
               {"function": "work.py:1(fast)", "file": "work.py", "line": 1, "name": "fast", "ncalls": 1,
                "tottime_s": 0.01, "cumtime_s": 0.01},
               {"function": "other.py:3(elsewhere)", "file": "other.py", "line": 3, "name": "elsewhere", "ncalls": 1,
                "tottime_s": 2.0, "cumtime_s": 2.0})
    ev = read_evidence([_r("ok", profile=profile)], ["work.py"])
    assert ev.diagnosis == "profile hot spot slow (work.py:6)"
    assert ev.functions == {"work.py": {"slow", "fast"}}
    assert read_evidence([_r("ok")], ["work.py"]).diagnosis == "no failing instances; exploring"


def test_nothing_mutable_is_a_noop(task: Task) -> None:
    for text in ('"""Only a docstring."""\n', "pass\n", "import os\n\n\nclass A:\n    pass\n"):
        p = BuiltinProposer().propose(_ctx(task, {"dispatch.py": text}), random.Random(0))
        assert not p.ok and p.failure == "noop", (text, p)
        assert mutate_source(text, random.Random(0)) is None
    p = BuiltinProposer().propose(_ctx(task, {"notes.txt": "x = 1\n"}), random.Random(0))
    assert p.failure == "noop"


def test_tried_changes_are_avoided(task: Task) -> None:
    src = "def f(a, b):\n    return a\n"
    first = BuiltinProposer().propose(_ctx(task, {"f.py": src}), random.Random(3))
    again = BuiltinProposer().propose(_ctx(task, {"f.py": src}, tried=(_tried(first.change),)), random.Random(3))
    assert first.ok and again.ok and again.change != first.change
    # Another proposer's attempt with the same words is not this proposer's change.
    other = BuiltinProposer().propose(_ctx(task, {"f.py": src}, tried=(_tried(first.change, proposer="x"),)),
                                      random.Random(3))
    assert other.change == first.change


def test_jobshop_seed_mutants_parse_and_run(task: Task) -> None:
    proposer = BuiltinProposer()
    ctx = _ctx(task, {"dispatch.py": SEED}, [_r("ok", "makespan 1462, best known 1231")])
    runs, other_feature, changes = 0, 0, set()
    for seed in range(200):
        p = proposer.propose(ctx, random.Random(seed))
        assert p.ok, p
        text = p.changes["dispatch.py"]
        assert text != SEED
        changes.add(p.change)
        tree = ast.parse(text)
        func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "priority")
        used = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if used - {"duration"}:
            other_feature += 1
        namespace: dict = {}
        exec(compile(text, "dispatch.py", "exec"), namespace)  # our own seed, mutated: safe to run here
        try:
            value = namespace["priority"](**SAMPLE)
        except Exception:  # noqa: BLE001 - a mutant may fail; most must not
            continue
        if isinstance(value, int | float) and not math.isnan(value):
            runs += 1
    assert runs >= 180, runs
    assert other_feature >= 50, other_feature
    assert len(changes) >= 40  # a real variety of mutants, not the same one again
    assert any(c.startswith("replace duration with ") and c.endswith("in priority (line 39)") for c in changes)


def test_read_preferences_counts_this_proposers_outcomes() -> None:
    lessons = _lessons(
        ("accepted", "accepted", "perturb", "perturb constant 0.5 -> 0.7 in f (line 2)"),
        ("rejected", "worse", "perturb", "perturb constant 0.7 -> 0.4 in f (line 2)"),
        ("accepted", "accepted", "combine", "f.py: combine a -> a - 0.5 * b in f (line 2)"),
        ("rejected", "crashed", "combine", "combine a -> a / b in f (line 2)"),
        ("rejected", "crashed", "combine", "combine a -> a * c ** -0.5 in f (line 2)"),
        ("rejected", "crashed", "combine", "combine a -> a + 2 * d in f (line 2)"),
        ("failed", "duplicate", "replace", "replace a with b in f (line 2)"),  # never evaluated: not counted
    )
    # An LLM's lesson reads like a mutation but is not one of this proposer's: its wording counts for nothing.
    llm = _lessons(("rejected", "worse", "", "perturb constant 1 -> 2 in f (line 2)"), proposer="reflective")
    prefs = read_preferences(lessons + llm)
    assert prefs.wins == {"perturb": 1, "combine": 1}
    assert prefs.losses == {"perturb": 1, "combine": 3}
    assert read_preferences(()) == Preferences()


def test_the_bandit_prefers_kinds_that_were_accepted(task: Task) -> None:
    history = [("accepted", "accepted", "perturb", f"perturb constant 2 -> {3 + i} in score (line 10)")
               for i in range(6)]
    history += [("rejected", "worse", "replace", f"replace b with a in score (line {11 + i})") for i in range(6)]
    kinds = {}
    for label, lessons in (("none", ()), ("history", _lessons(*history))):
        ctx = _ctx(task, {"rich.py": RICH}, lessons=lessons)
        descs = [BuiltinProposer().propose(ctx, random.Random(seed)).change for seed in range(300)]
        kinds[label] = Counter(next(iter(_labels(d))) for d in descs if " in score " in d)  # LIMIT: perturb only
    # Uniform over the six kinds without history; perturb is drawn most once it kept being accepted, and
    # replace, which kept losing, less than before.
    assert kinds["history"]["perturb"] >= 2 * kinds["none"]["perturb"], kinds
    assert kinds["history"]["perturb"] == max(kinds["history"].values()), kinds
    assert kinds["history"]["replace"] < kinds["none"]["replace"], kinds
    # Deterministic for a seed, history included.
    ctx = _ctx(task, {"rich.py": RICH}, lessons=_lessons(*history))
    assert BuiltinProposer().propose(ctx, random.Random(5)) == BuiltinProposer().propose(ctx, random.Random(5))


def test_combine_forms_and_guarded_divisions() -> None:
    src = "def f(a, b):\n    return a\n"
    forms: Counter[str] = Counter()
    for seed in range(300):
        got = mutate_source(src, random.Random(seed))
        assert got is not None
        ast.parse(got[0])
        if got[1].startswith("combine"):
            forms.update(f for f in (" + ", " - ", " * ", " / ", " ** ") if f in got[1].split("->")[1])
    assert all(forms[f] >= 5 for f in (" + ", " - ", " * ", " / ", " ** ")), forms
    # A divisor or the base of a negative or fractional power is guarded: no mutant crashes where b is zero or
    # negative (a feature that is 0 on some calls), while a positive integer power stays as it is.
    guarded = 0
    for seed in range(300):
        new, desc = mutate_source(src, random.Random(seed)) or ("", "")
        if not desc.startswith("combine"):
            continue
        namespace: dict = {}
        exec(compile(new, "f.py", "exec"), namespace)
        for b in (0, -1.0, 2):
            value = namespace["f"](3.0, b)
            assert isinstance(value, int | float), (desc, b, value)
        guarded += "max(b, 1e-09)" in desc
        assert "/ b" not in desc and "b ** -" not in desc and "b ** 0.5" not in desc, desc
    assert guarded >= 20, guarded


def test_traceback_text_alone_is_not_read_back(task: Task) -> None:
    # Evidence reaches the proposer as records: a traceback that is only text (no frames) names no function.
    ev = read_evidence([_r("error", TRACEBACK)], ["work.py"])
    assert ev.functions == {} and "without a traceback into the candidate" in ev.diagnosis


POLICY = '''"""A policy mixing text and numbers, as spot-scheduling policies do."""
MODES = ("spot", "on_demand")


def decide(obs, state: str, deadline, budget=3.0):
    label = "wait"
    if state == "idle":
        return "idle"
    margin = deadline - obs * 2.0
    if margin > budget:
        label = "spot"
    for mode in ("spot", "on_demand"):
        if mode == label:
            return mode
    return label + "-late" if margin < 0 else label
'''


def test_mutations_respect_what_kind_of_value_a_name_holds() -> None:
    # Text, collections and flags are never operands of arithmetic in a mutant: no "idle" * max(obs, 1e-09) ** -1.
    bad = 0
    for seed in range(400):
        got = mutate_source(POLICY, random.Random(seed))
        assert got is not None
        new, desc = got
        namespace: dict = {}
        exec(compile(new, "policy.py", "exec"), namespace)  # our own test module, mutated: safe to run here
        for args in ((1.0, "idle", 10.0), (1.0, "busy", 10.0), (3.0, "busy", 1.0), (0.0, "busy", 100.0)):
            try:
                namespace["decide"](*args)
            except TypeError:
                bad += 1
                print(desc)
            except (ZeroDivisionError, OverflowError, ValueError, NameError):
                continue
        for textual in ("state", "label", "mode", '"idle"', '"wait"', '"spot"'):
            assert not (desc.startswith("combine") and desc.split("->")[0].strip().endswith(textual)), desc
            assert f"max({textual.strip(chr(34))}, " not in desc, desc
    assert bad == 0
