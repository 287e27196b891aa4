"""Tests of the shipped spot-scheduling task (tasks/spot): simulator, offline optimum, trace generator,
judge, and the task through the real sandbox (session channel, crashing and future-reading policies)."""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from evolver.api import evaluate

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "spot"
for path in (ROOT / "sandboxes" / "harness", TASK):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import generate_traces as gen  # noqa: E402
import spot_sim as sim  # noqa: E402
from spot_optimum import offline_optimum  # noqa: E402
from spot_server import SpotServer  # noqa: E402

USAGE = {"wall_s": 0.1, "cpu_s": 0.05, "peak_rss_mb": 20.0}


@pytest.fixture(scope="module")
def ev() -> Iterator[ModuleType]:
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec = importlib.util.spec_from_file_location("spot_evaluate_under_test", TASK / "evaluate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    assert "policy" not in sys.modules, "loading the evaluator must not import the candidate"
    yield module


@pytest.fixture(scope="module")
def data(ev: ModuleType) -> dict:
    return ev._data()


def _policy(name: str) -> ModuleType:
    return gen._load_policy(name)


def _run(sc: sim.Scenario, decide, params: dict) -> tuple[sim.Outcome, SpotServer]:
    """A policy through the same server and observation code as an evaluation, replayed like the judge."""
    server = SpotServer(sc)
    gen.run_policy(decide, params, server.handle)
    return sim.replay(sc, server.decisions), server


def _random_policy(seed: int):
    rng = random.Random(seed)
    return lambda obs: rng.choice(("spot", "on_demand", "idle", "spot"))


# ---------------------------------------------------------------------------------------------------------
# Simulator invariants


def _scenarios(data: dict, names: list[str]) -> Iterator[tuple[str, sim.Scenario, dict]]:
    for name in names:
        meta = data["scenarios"][name]
        sc = sim.scenario(data["traces"][meta["trace"]]["avail"], meta["deadline_h"], meta["overhead_h"])
        yield name, sc, gen.params_of(meta["deadline_h"], meta["overhead_h"])


SAMPLE = ["z01-d52-o0.40", "z03-d70-o0.20", "z06-d92-o0.02", "z08-d52-o0.02", "z10-d70-o0.40", "z13-d92-o0.20"]


def test_cost_bounds_and_deadline_for_any_policy(data: dict) -> None:
    always = {c: (lambda obs, c=c: c) for c in ("spot", "on_demand", "idle")}
    for name, sc, params in _scenarios(data, SAMPLE):
        od, spot = sim.all_on_demand_cost(sc), sim.all_spot_cost(sc)
        for label, decide in [*always.items(), *((f"random{i}", _random_policy(i)) for i in range(4))]:
            out, _ = _run(sc, decide, params)
            assert out.done_s is not None and out.done_s <= sc.deadline_s, (name, label)
            assert out.cost >= spot - 1e-9, (name, label, out.cost, spot)
            assert out.spot_s + out.od_s >= sc.work_s, (name, label)
        # On-demand from the start is exactly the 0 of the scale; waiting idle is forced onto it just in time.
        assert _run(sc, always["on_demand"], params)[0].cost == pytest.approx(od)
        idle, _ = _run(sc, always["idle"], params)
        assert idle.cost == pytest.approx(od) and idle.forced_ticks > 0 and idle.restarts == 1
        assert sim.normalised_score(od, sc) == 0.0 and sim.normalised_score(spot, sc) == pytest.approx(100.0)


def test_uninterrupted_spot_is_the_100_of_the_scale() -> None:
    sc = sim.scenario("1" * 312, 52, 0.2)
    out, _ = _run(sc, lambda obs: "spot", gen.params_of(52, 0.2))
    assert out.cost == pytest.approx(sim.all_spot_cost(sc))
    assert out.done_s == sim.WORK_S + 720 and out.restarts == 1 and out.overhead_s == 720


def test_preemption_restart_and_forcing_by_hand() -> None:
    # 1 h of work, deadline 2 h (12 ticks), overhead 0.2 h (720 s: one tick and 120 s of the next).
    sc = sim.scenario("110111111111", 2, 0.2, work_h=1.0)
    state = sim.State()
    state, taken, why = sim.step(state, sim.SPOT, sc)
    assert (state.work_s, state.overhead_left_s, taken, why) == (0, 120, sim.SPOT, "")
    state, taken, why = sim.step(state, sim.SPOT, sc)
    assert (state.work_s, state.overhead_left_s) == (480, 0)
    state, preempted = sim.begin_tick(state, sc)
    assert preempted and state.instance == sim.NONE
    state, taken, why = sim.step(state, sim.SPOT, sc)  # spot is gone in tick 2: idles
    assert (taken, why, state.work_s) == (sim.NONE, "spot_unavailable", 480)
    # 3120 s of work left: idling is allowed while a fresh on-demand start (720 + 3120 s) still fits after the
    # tick, i.e. through tick 4 (5400 s left after it); in tick 5 only 3600 s would be left: forced.
    for tick in (3, 4):
        state, taken, why = sim.step(state, sim.NONE, sc)
        assert (state.tick, taken, why) == (tick + 1, sim.NONE, "")
    state, taken, why = sim.step(state, sim.NONE, sc)
    assert (taken, why, state.overhead_left_s) == (sim.OD, "forced", 120)
    # The same run from decisions: every idle from tick 5 on is forced onto the one on-demand instance.
    out = sim.replay(sc, [sim.SPOT, sim.SPOT, sim.SPOT] + [sim.NONE] * 9)
    assert out.done_s == 5 * 600 + 720 + 3120 and out.ticks == 12 and out.forced_ticks == 7
    assert (out.restarts, out.preemptions, out.spot_unavailable_requests) == (2, 1, 1)
    assert (out.spot_s, out.od_s, out.overhead_s, out.idle_ticks) == (1200, 3840, 1440, 3)
    assert out.cost == pytest.approx((0.9731 * 1200 + 3.06 * 3840) / 3600)


def test_offline_optimum_matches_exhaustive_search() -> None:
    rng = random.Random(7)
    for overhead_h in (*sim.OVERHEADS_H, 0.2):
        for _ in range(1):
            # 45 min of work in 8 ticks (80 min): every one of the 3^8 decision sequences is tried.
            sc = sim.scenario("".join(rng.choice("0111") for _ in range(8)), 4 / 3, overhead_h, work_h=0.75)
            best = math.inf
            for seq in itertools.product((sim.NONE, sim.SPOT, sim.OD), repeat=8):
                out = sim.replay(sc, list(seq))
                best = min(best, out.cost)
            assert sim.dollars(offline_optimum(sc)) == pytest.approx(best, abs=1e-12), (sc.avail, overhead_h)


# ---------------------------------------------------------------------------------------------------------
# Data, generator, baselines


def test_generator_is_deterministic_and_matches_the_shipped_traces(data: dict) -> None:
    for zone, (_split, availability, median_h, mean_h) in gen.ZONES.items():
        bits = gen.generate(zone, sim.MAX_TICKS)
        assert bits == gen.generate(zone, sim.MAX_TICKS)
        assert data["traces"][zone]["avail"] == bits, f"{zone}: regenerate data/traces.json"
        assert 0.1 <= availability <= 0.9 and 0.2 <= median_h <= 0.8 and 0.5 <= mean_h <= 12
    assert gen.generate("z01", 100, salt="a") != gen.generate("z01", 100, salt="b")
    # Calibration on a long trace: the published ranges of availability and of available stretches.
    stats = gen.stretch_stats(gen.generate("z07", 2000 * 6, salt="stats"))
    assert 0.15 < stats["availability"] < 0.25 and 0.2 <= stats["up_median_h"] <= 0.5


def test_splits_and_instances(data: dict) -> None:
    splits = tomllib.loads((TASK / "instances.toml").read_text(encoding="utf-8"))
    assert splits == data["splits"]
    names = [n for split in splits.values() for n in split]
    assert len(names) == len(set(names)) == len(data["scenarios"])
    zones = {split: {data["scenarios"][n]["trace"] for n in names} for split, names in splits.items()}
    assert not (zones["train"] & zones["val"]) and not (zones["val"] & zones["test"])
    assert (TASK / "instances.toml").read_text(encoding="utf-8") == gen.render_instances(data)


def test_baseline_costs_and_optimum_bounds(data: dict) -> None:
    """The shipped baseline costs are what the baselines do now; the optimum is below every one of them."""
    baselines = {name: _policy(name) for name in ("greedy", "uniform_progress")}
    names = list(data["scenarios"])
    for name, sc, params in _scenarios(data, names):
        meta = data["scenarios"][name]
        assert sim.all_spot_cost(sc) - 1e-6 <= meta["optimum"] <= sim.all_on_demand_cost(sc) + 1e-6, name
        for label, policy in baselines.items():
            cost = _run(sc, policy.decide, params)[0].cost
            assert cost == pytest.approx(meta[label], abs=1e-6), (name, label)
            assert meta["optimum"] <= cost + 1e-6, (name, label)
    # The seed is greedy.
    assert (TASK / "seed" / "policy.py").read_text() == (TASK / "baselines" / "greedy.py").read_text()


def test_optimum_recomputed(data: dict) -> None:
    for name, sc, _ in _scenarios(data, ["z01-d52-o0.40", "z08-d52-o0.02", "z12-d52-o0.20"]):
        meta = data["scenarios"][name]
        assert sim.dollars(offline_optimum(sc)) == pytest.approx(meta["optimum"], abs=1e-6), name


# ---------------------------------------------------------------------------------------------------------
# Server and judge


def test_prepare_hides_the_trace(ev: ModuleType) -> None:
    inputs = ev.prepare("z08-d70-o0.20")
    assert set(inputs) == {"deadline_h", "restart_overhead_h", "work_h", "tick_h", "price_spot", "price_on_demand"}
    assert inputs["deadline_h"] == 70 and inputs["restart_overhead_h"] == 0.2


def test_judge_scores_the_recorded_decisions_not_the_output(ev: ModuleType, data: dict) -> None:
    name = "z08-d70-o0.20"
    server = ev.serve(name, ev.prepare(name))
    gen.run_policy(_policy("greedy").decide, ev.prepare(name), server.handle)
    verdict = ev.judge(name, {}, {"decisions": 0, "cost": 0.0, "score": 100}, USAGE, session=server)
    meta = data["scenarios"][name]
    sc = sim.scenario(data["traces"]["z08"]["avail"], 70, 0.2)
    assert not verdict["invalid"]
    assert verdict["objectives"]["cost"] == pytest.approx(meta["greedy"])
    assert verdict["score"] == pytest.approx(sim.normalised_score(meta["greedy"], sc))
    assert verdict["objectives"]["gap_pct"] == pytest.approx(100 * (meta["greedy"] - meta["optimum"]) / meta["optimum"])
    for part in ("offline optimum", "forced by the deadline", "restarts paid", "preemptions", "idle", "unused"):
        assert part in verdict["feedback"], part


def test_protocol_violations_and_early_stop_score_zero(ev: ModuleType) -> None:
    name = "z07-d52-o0.02"
    server = ev.serve(name, ev.prepare(name))
    assert "tick" in server.handle("start")
    assert server.handle("spot")["tick"] == 1
    assert "error" in server.handle("fast")
    assert "error" in server.handle("spot")  # nothing counts after a violation
    verdict = ev.judge(name, {}, None, USAGE, session=server)
    assert verdict["invalid"] and verdict["score"] == 0.0 and "'fast' is not one of" in verdict["feedback"]

    early = ev.serve(name, ev.prepare(name))
    early.handle("start")
    early.handle("idle")
    verdict = ev.judge(name, {}, None, USAGE, session=early)
    assert verdict["invalid"] and "stopped early" in verdict["feedback"]


# ---------------------------------------------------------------------------------------------------------
# Through the real sandbox


def _task_with_policy(tmp_path: Path, policy: str) -> Path:
    task = tmp_path / "spot"
    shutil.copytree(TASK, task, ignore=shutil.ignore_patterns("__pycache__"))
    (task / "seed" / "policy.py").write_text(policy, encoding="utf-8")
    toml = (task / "task.toml").read_text(encoding="utf-8")
    (task / "task.toml").write_text(toml.replace('backend = "auto"', 'backend = "process"'), encoding="utf-8")
    return task


def test_seed_through_the_sandbox_scores_greedy(tmp_path: Path, data: dict) -> None:
    names = ["z07-d52-o0.02", "z09-d92-o0.40"]
    task = _task_with_policy(tmp_path, (TASK / "seed" / "policy.py").read_text(encoding="utf-8"))
    report = evaluate(task, run_dir=tmp_path / "run", use_cache=False, instances=names)
    for r in report.results:
        meta = data["scenarios"][r.instance]
        sc = sim.scenario(data["traces"][meta["trace"]]["avail"], meta["deadline_h"], meta["overhead_h"])
        assert r.status == "ok", r.feedback
        assert r.score == pytest.approx(sim.normalised_score(meta["greedy"], sc), abs=1e-6)
        assert r.objectives["cost"] == pytest.approx(meta["greedy"], abs=1e-6)


CRASHING = '''
def decide(obs):
    if obs.tick == 5:
        raise ZeroDivisionError("policy gave up at tick five")
    return "spot" if obs.spot_available else "idle"
'''

FUTURE_READER = '''
import glob
import os
import sys

_tried = []


def _try(label, action):
    try:
        found = action()
    except Exception as exc:
        _tried.append(f"{label}: refused ({type(exc).__name__})")
        return
    _tried.append(f"{label}: GOT {str(found)[:60]}")


def _frames():
    seen = []
    frame = sys._getframe(1)
    while frame is not None:
        for value in frame.f_locals.values():
            if isinstance(value, (list, tuple)) and len(value) > 100 or (
                    isinstance(value, str) and len(value) > 100 and set(value) <= set("01")):
                seen.append(type(value).__name__ + str(len(value)))
        frame = frame.f_back
    return seen


def decide(obs):
    if obs.tick == 0:
        traces = [p for d in sys.path for p in glob.glob(os.path.join(d, "data", "traces.json"))]
        _tried.append(f"paths: {len(traces)}")
        _try("open", lambda: open(traces[0]).read(100))
        _try("os.open", lambda: os.read(os.open(traces[0], os.O_RDONLY), 100))
        _try("generator", lambda: __import__("generate_traces").generate("z07", 552))
        _try("subprocess", lambda: __import__("subprocess").run(["cat", traces[0]], capture_output=True).stdout)
        _try("link", lambda: os.link(traces[0], "copy.json"))
        _try("fork_exec", lambda: __import__("_posixsubprocess"))
        _tried.append(f"frames: {_frames() or 'nothing long'}")
        print(" | ".join(_tried))
    return "spot" if obs.spot_available else "idle"
'''


def test_crashing_policy_scores_zero_with_its_traceback(tmp_path: Path) -> None:
    report = evaluate(_task_with_policy(tmp_path, CRASHING), run_dir=tmp_path / "run", use_cache=False,
                      instances=["z07-d52-o0.02"])
    r = report.results[0]
    assert r.status == "error" and r.score == 0.0
    assert "ZeroDivisionError: policy gave up at tick five" in r.feedback
    assert "policy.py" in r.feedback and "line 4" in r.feedback


def test_future_reading_policy_gets_nothing(tmp_path: Path, data: dict) -> None:
    name = "z07-d52-o0.02"
    report = evaluate(_task_with_policy(tmp_path, FUTURE_READER), run_dir=tmp_path / "run", use_cache=False,
                      instances=[name])
    r = report.results[0]
    assert r.status == "ok", r.feedback
    for label in ("open", "os.open", "generator", "subprocess", "link", "fork_exec"):
        assert f"{label}: refused" in r.stdout, r.stdout
    assert "paths: 1" in r.stdout, r.stdout  # the file is there to be found: the refusals are real
    assert "GOT" not in r.stdout and "frames: nothing long" in r.stdout, r.stdout
    assert r.objectives["cost"] == pytest.approx(data["scenarios"][name]["greedy"], abs=1e-6)
