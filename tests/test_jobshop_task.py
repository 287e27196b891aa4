"""Unit tests of the shipped job-shop task (tasks/jobshop): schedule generator, judge, data and splits.

The evaluator is loaded by path, as the harness does; a copy of the seed (or a small rule written by a test)
stands in for the candidate directory.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import math
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from evolver.task import load_task

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "jobshop"
SEED = TASK / "seed"
HARNESS = ROOT / "sandboxes" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

USAGE = {"wall_s": 0.5, "cpu_s": 0.25, "peak_rss_mb": 30.0}

# A 3 jobs x 3 machines instance small enough to schedule by hand.
#   J0: M0 3, M1 2, M2 2      J1: M0 2, M2 1, M1 4      J2: M1 4, M2 3, M0 1
# Non-delay SPT: t=0 M0 has J0 (3) and J1 (2) -> J1 [0,2); M1 J2 [0,4); t=2 M0 J0 [2,5), M2 J1 [2,3);
# t=4 M1 J1 [4,8) (J0 arrives only at 5), M2 J2 [4,7); t=7 M0 J2 [7,8); t=8 M1 J0 [8,10); t=10 M2 J0 [10,12).
TINY = {
    "name": "tiny",
    "duration_matrix": [[3, 2, 2], [2, 1, 4], [4, 3, 1]],
    "machines_matrix": [[0, 1, 2], [0, 2, 1], [1, 2, 0]],
    # No proven optimum: the judge must fall back on the upper bound (10, deliberately not 12).
    "metadata": {"optimum": None, "upper_bound": 10, "lower_bound": 9, "reference": "hand-made"},
}
TINY_SPT_STARTS = [[2, 8, 10], [0, 2, 4], [0, 4, 7]]
TINY_SPT_MAKESPAN = 12
TA01_SPT_MAKESPAN = 1462  # computed with this generator; the literature's SPT gap on ta01-10 is reproduced


def _forget_candidate() -> None:
    sys.modules.pop("dispatch", None)


@pytest.fixture(autouse=True)
def _no_candidate_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test imports its own `dispatch`; none may see another's (or leave one behind)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the simulator is loaded lazily by produce
    _forget_candidate()
    yield
    _forget_candidate()


@pytest.fixture(scope="module")
def ev() -> Iterator[ModuleType]:
    _forget_candidate()
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # leave no __pycache__ in the task folder
    try:
        spec = importlib.util.spec_from_file_location("jobshop_evaluate_under_test", TASK / "evaluate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    # Loading the evaluator must not import candidate code (the trusted harness loads it too).
    assert "dispatch" not in sys.modules
    yield module


@pytest.fixture
def tiny(ev: ModuleType, monkeypatch: pytest.MonkeyPatch) -> str:
    data = {**ev._instances(), "tiny": TINY}
    monkeypatch.setattr(ev, "_instances", lambda: data)
    return "tiny"


def _candidate(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make `directory` the candidate: first on sys.path, as in the untrusted process."""
    _forget_candidate()
    monkeypatch.syspath_prepend(str(directory))


@pytest.fixture
def seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A copy, as the harness would hand over a candidate directory; the seed folder stays untouched.
    shutil.copy(SEED / "dispatch.py", tmp_path / "dispatch.py")
    _candidate(monkeypatch, tmp_path)


def _write_rule(tmp_path: Path, body: str) -> Path:
    (tmp_path / "dispatch.py").write_text(f"def priority(**features):\n    {body}\n", encoding="utf-8")
    return tmp_path


def _run(ev: ModuleType, instance: str) -> tuple[Any, Any]:
    """prepare -> produce, with JSON round trips as between the real processes."""
    inputs = json.loads(json.dumps(ev.prepare(instance)))
    output = json.loads(json.dumps(ev.produce(inputs)))
    return inputs, output


# ---------------------------------------------------------------------------------------------------------
# The seed through the whole pipeline


def test_prepare_hides_the_bounds(ev: ModuleType) -> None:
    inputs = ev.prepare("ta01")
    assert set(inputs) == {"name", "durations", "machines"}
    assert len(inputs["durations"]) == 15 and all(len(row) == 15 for row in inputs["durations"])


def test_spt_on_tiny_instance(ev: ModuleType, tiny: str, seed: None) -> None:
    inputs, output = _run(ev, tiny)
    assert output == {"starts": TINY_SPT_STARTS}
    verdict = ev.judge(tiny, inputs, output, USAGE)
    assert not verdict["invalid"]
    assert verdict["score"] == pytest.approx(10 / 12)
    assert verdict["objectives"]["gap_pct"] == pytest.approx(20.0)
    assert verdict["objectives"]["runtime_s"] == pytest.approx(USAGE["cpu_s"])
    assert f"makespan {TINY_SPT_MAKESPAN}, best known 10, gap 20.0%" in verdict["feedback"]


def test_spt_on_ta01(ev: ModuleType, seed: None) -> None:
    inputs, output = _run(ev, "ta01")
    verdict = ev.judge("ta01", inputs, output, USAGE)
    assert not verdict["invalid"], verdict["feedback"]
    assert verdict["score"] == pytest.approx(1231 / TA01_SPT_MAKESPAN)
    assert verdict["objectives"]["gap_pct"] == pytest.approx(100 * (TA01_SPT_MAKESPAN - 1231) / 1231)
    feedback = verdict["feedback"]
    assert feedback.startswith(f"makespan {TA01_SPT_MAKESPAN}, best known 1231")
    for part in ("Last machine to finish: M", "Critical path:", "Machines idle", "Last jobs: J"):
        assert part in feedback
    assert len(feedback) < 800


def test_feedback_facts_on_tiny(ev: ModuleType, tiny: str) -> None:
    facts = ev.analyse(TINY["duration_matrix"], TINY["machines_matrix"], TINY_SPT_STARTS)
    assert facts["makespan"] == 12
    assert facts["last_machine"] == 2 and facts["last_machine_idle"] == 12 - 6
    # J0's chain sets the makespan: J0 op0 (M0, ends 5) waits for M1 until J1 op2 ends at 8, then J0 runs on.
    # Path backwards: J0 op2 <- J0 op1 <- J1 op2 (machine arc) <- J2 op0 (machine arc, M1 [0,4)).
    assert (facts["path_ops"], facts["job_arcs"], facts["machine_arcs"]) == (4, 1, 2)
    assert facts["unforced_idle"] == 0
    assert facts["idle_pct"] == pytest.approx(100 * (1 - 22 / 36))
    assert facts["late_jobs"][0] == (0, 12, 7)


def test_constant_rule_ties_go_to_lowest_job(ev: ModuleType, tiny: str, tmp_path: Path, monkeypatch) -> None:
    # A constant rule leaves every choice to the tie-break: lowest job index first.
    _candidate(monkeypatch, _write_rule(tmp_path, "return 0"))
    _, output = _run(ev, tiny)
    assert output == {"starts": [[0, 4, 7], [3, 9, 10], [0, 4, 7]]}
    assert not ev.judge(tiny, None, output, USAGE)["invalid"]


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ("return float('nan')", ValueError, "nan"),
        ("return 'soon'", TypeError, "'soon'"),
        ("return None", TypeError, "None"),
        ("return True", TypeError, "True"),
    ],
)
def test_bad_rule_value_is_a_clear_error(
    ev: ModuleType, tiny: str, tmp_path: Path, monkeypatch, body: str, error: type, message: str
) -> None:
    _candidate(monkeypatch, _write_rule(tmp_path, body))
    with pytest.raises(error, match=message):
        ev.produce(ev.prepare(tiny))


def test_missing_priority_function(ev: ModuleType, tiny: str, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "dispatch.py").write_text("def rule(**features):\n    return 0\n", encoding="utf-8")
    _candidate(monkeypatch, tmp_path)
    with pytest.raises(TypeError, match="priority"):
        ev.produce(ev.prepare(tiny))


# ---------------------------------------------------------------------------------------------------------
# The judge never trusts the output


def _tampered(change: Any) -> Any:
    starts = copy.deepcopy(TINY_SPT_STARTS)
    return change(starts)


def _set(j: int, k: int, value: Any) -> Any:
    def change(starts: list[list[Any]]) -> dict[str, Any]:
        starts[j][k] = value
        return {"starts": starts}

    return change


REJECTED = [
    # J0 op0 moved to t=1 on M0, where J1 op0 runs [0, 2).
    (
        "overlap",
        _tampered(_set(0, 0, 1)),
        "machine 0 overlap: job 1 op 0 runs [0, 2) and job 0 op 0 runs [1, 4)",
    ),
    # J2 op1 at t=3 while J2 op0 (M1, [0, 4)) still runs.
    ("precedence", _tampered(_set(2, 1, 3)), "precedence violated in job 2: op 1 starts at 3 but op 0"),
    (
        "missing op",
        _tampered(lambda s: {"starts": [s[0], s[1], s[2][:2]]}),
        "job 2 has 2 start times, expected 3",
    ),
    ("extra op", _tampered(lambda s: {"starts": [s[0], s[1], [*s[2], 20]]}), "job 2 has 4 start times"),
    ("missing job", _tampered(lambda s: {"starts": s[:2]}), "list of 3 lists (one per job), got a list of 2"),
    ("row not a list", _tampered(lambda s: {"starts": [s[0], s[1], 7]}), "starts[2] must be a list"),
    ("no starts key", {"schedule": TINY_SPT_STARTS}, 'output must be an object {"starts"'),
    ("not a dict", TINY_SPT_STARTS, "output must be an object"),
    ("none", None, "got None"),
    ("bool", _tampered(_set(1, 0, False)), "job 1 op 0 must be an int, got False (bool)"),
    ("float", _tampered(_set(0, 2, 10.0)), "job 0 op 2 must be an int, got 10.0 (float)"),
    ("nan", _tampered(_set(0, 2, math.nan)), "job 0 op 2 must be an int, got nan (float)"),
    ("inf", _tampered(_set(0, 2, math.inf)), "got inf (float)"),
    ("str", _tampered(_set(0, 2, "10")), "job 0 op 2 must be an int, got '10' (str)"),
    ("negative", _tampered(_set(1, 0, -2)), "start of job 1 op 0 is negative (-2)"),
    ("huge", _tampered(_set(0, 2, 10**30)), "beyond any sensible schedule"),
]


@pytest.mark.parametrize(("output", "reason"), [case[1:] for case in REJECTED], ids=[c[0] for c in REJECTED])
def test_judge_rejects(ev: ModuleType, tiny: str, output: Any, reason: str) -> None:
    verdict = ev.judge(tiny, ev.prepare(tiny), output, USAGE)
    assert verdict["invalid"] is True
    assert verdict["score"] == 0.0
    assert reason in verdict["feedback"], verdict["feedback"]


def test_judge_ignores_claims_in_output_and_inputs(ev: ModuleType, tiny: str) -> None:
    output = {"starts": copy.deepcopy(TINY_SPT_STARTS), "makespan": 1, "score": 99.0, "gap_pct": -50.0}
    fake_inputs = {"name": "tiny", "durations": [[1, 1, 1]] * 3, "machines": TINY["machines_matrix"]}
    verdict = ev.judge(tiny, fake_inputs, output, USAGE)
    assert not verdict["invalid"]
    assert verdict["score"] == pytest.approx(10 / TINY_SPT_MAKESPAN)
    assert verdict["objectives"]["gap_pct"] == pytest.approx(20.0)


def test_delayed_but_feasible_schedule_is_accepted(ev: ModuleType, tiny: str) -> None:
    # Everything shifted by 5: feasible, just worse. The makespan is recomputed: 17.
    output = {"starts": [[s + 5 for s in row] for row in TINY_SPT_STARTS]}
    verdict = ev.judge(tiny, None, output, USAGE)
    assert not verdict["invalid"]
    assert verdict["score"] == pytest.approx(10 / 17)
    assert verdict["objectives"]["gap_pct"] == pytest.approx(70.0)
    assert "unforced idle 5" in verdict["feedback"]


def test_best_known(ev: ModuleType) -> None:
    assert ev.best_known("ta01") == 1231  # proven optimum
    assert ev.best_known("ta22") == 1600  # optimum open: upper bound
    with pytest.raises(KeyError, match="unknown job-shop instance"):
        ev.best_known("ta99")


# ---------------------------------------------------------------------------------------------------------
# Generator, data and configuration


def test_active_scheme_is_feasible_too(ev: ModuleType) -> None:
    sim = ev._load_simulator()
    inst = ev._instances()["ta01"]
    starts = sim.generate(
        inst["duration_matrix"], inst["machines_matrix"], lambda duration, **_: duration, "active"
    )
    checked, reason = ev.check_schedule(inst["duration_matrix"], inst["machines_matrix"], {"starts": starts})
    assert checked is not None, reason
    with pytest.raises(ValueError, match="unknown scheme"):
        sim.generate([[1]], [[0]], lambda **_: 0, "greedy")


def test_seed_signature_matches_the_features(ev: ModuleType) -> None:
    source = (SEED / "dispatch.py").read_text(encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(source, "dispatch.py", "exec"), namespace)
    params = tuple(inspect.signature(namespace["priority"]).parameters)
    assert params == ev._load_simulator().FEATURES


def test_splits_and_data(ev: ModuleType) -> None:
    splits = tomllib.loads((TASK / "instances.toml").read_text(encoding="utf-8"))
    assert set(splits) == {"train", "val", "test"}
    names = [n for split in splits.values() for n in split]
    assert len(names) == len(set(names)), "splits must be disjoint"
    data = ev._instances()
    assert set(data) == set(names), "ship exactly the instances the splits use"
    for name in names:
        inst = data[name]
        assert set(inst["metadata"]) >= {"optimum", "upper_bound", "lower_bound", "reference"}
        assert len(inst["duration_matrix"]) == len(inst["machines_matrix"])
    for split in splits.values():
        assert len({len(data[n]["duration_matrix"]) for n in split}) >= 3, "each split mixes sizes"
    assert "MIT License" in (TASK / "data" / "LICENSE").read_text(encoding="utf-8")


def test_task_toml(ev: ModuleType) -> None:
    config = tomllib.loads((TASK / "task.toml").read_text(encoding="utf-8"))
    assert config["task"]["name"] == "jobshop"
    assert config["task"]["mutable"] == ["dispatch.py"]
    assert (TASK / config["task"]["seed"] / "dispatch.py").is_file()
    assert (TASK / config["evaluate"]["evaluator"]).is_file()
    task = load_task(TASK)
    assert task.objectives == {"score": "max", "gap_pct": "min", "runtime_s": "min"}
    assert task.optimized == {"score": "max"} and task.accept_rule == "strict"  # the others are only reported
