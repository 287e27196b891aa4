"""Objective roles, acceptance rules and the statistics of staged validation, as pure functions."""

from __future__ import annotations

import pytest

from evolver.engine.racing import Race, race_stop, stage_ends, t_quantile, upper_bound
from evolver.errors import TaskError
from evolver.evaluation import InstanceResult
from evolver.objectives import Objective, accept_rule_for, gate_failures, judge, parse_objectives, regressed_gate
from evolver.run_state import Standings


def res(instance: str, score: float, status: str = "ok", **objectives: float) -> InstanceResult:
    return InstanceResult(instance, "train", status, score, dict(objectives), "")


SPECS = parse_objectives({"score": "max", "cost": "min"}, "task.toml")


def test_parse_accepts_directions_and_tables_and_adds_the_score_first() -> None:
    specs = parse_objectives({"cost": {"direction": "min", "tolerance": 0.05},
                              "ok": {"role": "gate", "at_least": 1}, "gap": {"direction": "min", "role": "report"}},
                             "task.toml")
    assert list(specs) == ["score", "cost", "ok", "gap"]
    assert specs["cost"] == Objective("cost", "min", "optimize", 0.05)
    assert specs["ok"].bounded and specs["ok"].at_least == 1.0
    assert accept_rule_for(specs, None) == "pareto"  # score and cost are optimized
    assert accept_rule_for({"score": Objective("score"), "gap": specs["gap"]}, None) == "strict"
    assert accept_rule_for(specs, "ties") == "ties"


@pytest.mark.parametrize(("raw", "where", "expected"), [
    ({"cost": "lowest"}, "[objectives] cost", '"max" or "min"'),
    ({"cost": {"role": "judge"}}, "[objectives] cost.role", '"optimize", "gate" or "report"'),
    ({"cost": {"direction": "min", "at_least": 3}}, "[objectives] cost", 'role = "gate"'),
    ({"cost": {"tolerance": -1}}, "[objectives] cost.tolerance", ">= 0"),
    ({"cost": {"weight": 2}}, "[objectives] cost.weight", "one of direction"),
    ({"score": {"role": "report"}}, "[objectives] score", "the score is what evolution maximises"),
])
def test_bad_objectives_name_the_key_and_what_was_expected(raw: dict, where: str, expected: str) -> None:
    with pytest.raises(TaskError) as info:
        parse_objectives(raw, "task.toml")
    assert where in str(info.value) and expected in str(info.value)


def test_pareto_accepts_equal_accuracy_at_lower_cost_and_rejects_cheaper_but_less_accurate() -> None:
    parent = [res("a", 1.0, cost=10.0), res("b", 0.5, cost=10.0)]
    cheaper = [res("a", 1.0, cost=8.0), res("b", 0.5, cost=8.0)]
    verdict = judge(parent, cheaper, SPECS, "pareto")
    assert verdict.accepted and verdict.gains == ("cost",) and "cost mean 8 vs 10" in verdict.detail
    worse = [res("a", 1.0, cost=5.0), res("b", 0.4, cost=5.0)]
    verdict = judge(parent, worse, SPECS, "pareto")
    assert not verdict.accepted and verdict.reason == "tradeoff" and verdict.losses == ("score",)
    assert judge(parent, parent, SPECS, "pareto").reason == "tie"
    # strict looks at the score alone: equal accuracy at lower cost is not an improvement there
    assert judge(parent, cheaper, SPECS, "strict").reason == "tie"
    assert judge(parent, cheaper, SPECS, "ties").accepted


def test_a_difference_inside_the_tolerance_is_noise() -> None:
    specs = parse_objectives({"runtime": {"direction": "min", "tolerance": 0.05}}, "task.toml")
    parent = [res("a", 1.0, runtime=1.00)]
    assert judge(parent, [res("a", 1.0, runtime=0.97)], specs, "pareto").reason == "tie"
    assert judge(parent, [res("a", 1.0, runtime=1.04)], specs, "pareto").reason == "tie"
    assert judge(parent, [res("a", 1.0, runtime=0.90)], specs, "pareto").accepted
    assert judge(parent, [res("a", 1.2, runtime=1.10)], specs, "pareto").reason == "tradeoff"


def test_a_bounded_gate_holds_per_instance_and_a_failure_never_meets_it() -> None:
    specs = parse_objectives({"passed": {"role": "gate", "at_least": 1.0}}, "task.toml")
    parent = [res("a", 0.5, passed=1.0), res("b", 0.5, passed=1.0)]
    child = [res("a", 2.0, passed=1.0), res("b", 2.0, passed=0.0)]
    verdict = judge(parent, child, specs, "strict")
    assert not verdict.accepted and verdict.reason == "gate" and "b: passed = 0 (ok), needs >= 1" in verdict.detail
    crashed = [res("a", 2.0, passed=1.0), res("b", 0.0, status="error")]
    assert gate_failures(crashed, specs) == ["b: passed = no result (error), needs >= 1"]
    assert judge(parent, [res("a", 1.0, passed=1.0), res("b", 1.0, passed=1.0)], specs, "strict").accepted


def test_an_unbounded_gate_must_not_regress_once_validation_is_complete() -> None:
    specs = parse_objectives({"memory": {"direction": "min", "role": "gate", "tolerance": 0.1}}, "task.toml")
    parent = [res("a", 1.0, memory=100.0)]
    assert regressed_gate([res("a", 2.0, memory=105.0)], [parent], specs, complete=True) is None
    assert "memory regressed: 130 from a parent's 100" in (
        regressed_gate([res("a", 2.0, memory=130.0)], [parent], specs, True) or "")
    assert regressed_gate([res("a", 2.0, memory=130.0)], [parent], specs, complete=False) is None
    assert judge(parent, [res("a", 2.0, memory=130.0)], specs, "strict").reason == "gate"


def test_stage_sizes_double_from_an_eighth_and_small_splits_are_one_stage() -> None:
    assert stage_ends(36, 5) == (5, 10, 20, 36)
    assert stage_ends(16, 4) == (4, 8, 16) and stage_ends(16, 5) == (5, 10, 16)
    assert stage_ends(463, 5) == (58, 116, 232, 463)
    assert stage_ends(4, 5) == (4,) and stage_ends(9, 5) == (9,) and stage_ends(10, 5) == (5, 10)
    assert stage_ends(36, 4, enabled=False) == (36,)


def test_t_quantiles_and_the_bound_shrink_with_the_instances_left() -> None:
    for p, df, expected in ((0.95, 4, 2.132), (0.95, 10, 1.812), (0.95, 30, 1.697), (0.99, 3, 4.541),
                            (0.999, 2, 22.327), (0.5, 7, 0.0)):
        assert t_quantile(p, df) == pytest.approx(expected, rel=1e-3, abs=1e-6)
    diffs = [-0.1, -0.2, 0.05, -0.15, -0.1]
    wide, narrow = upper_bound(diffs, 100, 0.95), upper_bound(diffs, 5, 0.95)
    assert wide is not None and narrow is not None and narrow < wide
    assert upper_bound([-0.1, -0.2, -0.3, -0.1], 10, 0.95) is None  # too few to say


def _standings(per: dict[str, list[float]]) -> Standings:
    ids = [f"v{k}" for k in range(len(next(iter(per.values()))))]
    s = Standings(ids, {"score": "max"}, "instance")
    for order, (sha, scores) in enumerate(per.items()):
        s.add(sha, [InstanceResult(i, "val", "ok", x, {}, "") for i, x in zip(ids, scores, strict=True)], order)
    return s


def test_racing_stops_a_child_confidently_below_its_parent_and_best_nowhere() -> None:
    standings = _standings({"seed": [1.0, 0.8, 0.9, 1.0, 0.7, 0.9, 0.8, 1.0, 0.9, 0.8, 1.0, 0.7]})
    parent = standings.results("seed")
    specs = {"score": Objective("score")}
    race = Race(tuple(f"v{k}" for k in range(12)), (5, 12))
    below = [res(f"v{k}", x) for k, x in enumerate([0.6, 0.5, 0.6, 0.7, 0.4])]
    why = race_stop(below, [parent], standings, specs, race, 0.95)
    assert why is not None and "stopped after 5 of 12" in why and "best on none" in why
    # best on one instance seen: it joins the frontier, so it is validated in full
    winner = [*below[:4], res("v4", 1.5)]
    assert race_stop(winner, [parent], standings, specs, race, 0.95) is None
    # too close to call (noisy differences around zero): go on
    close = [res(f"v{k}", x) for k, x in enumerate([1.0, 0.7, 0.95, 0.9, 0.7])]
    assert race_stop(close, [parent], standings, specs, race, 0.95) is None
    # nothing to compare against (no parent with results, or nothing optimized): never a stop
    assert race_stop(below, [], standings, specs, race, 0.95) is None
    # instances put first for the gates are not a random sample: they stay out of the bound
    forced = Race(race.order, race.ends, frozenset({"v0", "v1"}))
    assert race_stop(below, [parent], standings, specs, forced, 0.95) is None  # 3 sampled: too few


@pytest.mark.parametrize("population", [16, 100, 400])
def test_a_child_as_good_as_its_parent_is_stopped_at_most_at_the_stated_rate(population: int) -> None:
    # The bound alone (the child is best nowhere): differences of mean exactly 0 over the split, stages and looks
    # as the engine runs them, 2,000 races each.
    import random

    rng = random.Random(population)
    ends = stage_ends(population, 5)
    looks = len(ends) - 1
    stopped = 0
    for _ in range(2000):
        diffs = [rng.gauss(0, 1) for _ in range(population)]
        mean = sum(diffs) / population
        diffs = [d - mean for d in diffs]
        rng.shuffle(diffs)
        for end in ends[:-1]:
            bound = upper_bound(diffs[:end], population, 1 - 0.05 / looks)
            if bound is not None and bound < 0:
                stopped += 1
                break
    assert stopped / 2000 <= 0.05


def test_minibatches_take_one_instance_the_parent_loses_and_prefer_instances_that_tell_members_apart() -> None:
    import random

    from evolver.engine.plans import discriminating_minibatch

    train = [f"t{k}" for k in range(10)]
    known = {("a", "t0"): 1.0, ("b", "t0"): 0.5, ("a", "t1"): 0.2, ("b", "t1"): 0.9}
    known.update({(m, f"t{k}"): 0.5 for m in "ab" for k in range(2, 10)})  # every member ties on t2..t9
    for seed in range(20):
        batch = discriminating_minibatch(train, 3, "a", ["a", "b"], known, random.Random(seed))
        assert batch[0] == "t1" and len(set(batch)) == 3  # a loses t1 to b
    counts = {i: 0 for i in train}
    for seed in range(400):
        for i in discriminating_minibatch(train, 2, "b", ["a", "b"], known, random.Random(seed))[1:]:
            counts[i] += 1
    # after t0 (b loses it), t1 (members differ) is drawn about 3x as often as any instance where all tie
    assert counts["t1"] > 2 * max(counts[f"t{k}"] for k in range(2, 10))


def test_a_test_skipped_on_the_parent_too_is_not_held_against_the_child() -> None:
    specs = parse_objectives({"score": {"role": "gate", "at_least": 1.0}, "d": "min"}, "task.toml")
    parent = [res("a", 1.0), res("b", 0.0, status="skipped")]
    assert gate_failures([res("a", 1.0), res("b", 0.0, status="skipped")], specs, [parent]) == []
    assert gate_failures([res("a", 0.0, status="failed")], specs, [parent]) == ["a: score = 0 (failed), needs >= 1"]


def test_when_the_score_is_a_gate_strict_and_ties_judge_the_optimized_objective() -> None:
    specs = parse_objectives({"score": {"role": "gate", "at_least": 1.0}, "duration_s": "min"}, "task.toml")
    assert accept_rule_for(specs, None) == "strict"
    parent = [res("a", 1.0, duration_s=4.0), res("b", 1.0, duration_s=4.0)]
    faster = [res("a", 1.0, duration_s=1.0), res("b", 1.0, duration_s=1.0)]
    slower = [res("a", 1.0, duration_s=9.0), res("b", 1.0, duration_s=9.0)]
    assert judge(parent, faster, specs, "strict").accepted
    assert judge(parent, slower, specs, "ties").reason == "worse"
    with pytest.raises(TaskError, match="optimize"):
        parse_objectives({"score": {"role": "gate", "at_least": 1.0}, "d": {"role": "report"}}, "task.toml")


def test_gates_hold_a_child_to_what_held_for_its_parent_and_a_skip_is_no_pass() -> None:
    specs = parse_objectives({"score": {"role": "gate", "at_least": 1.0}, "duration_s": "min"}, "task.toml")
    # the parent (the seed) fails b: the child is not condemned for failing it too, but for a new failure it is
    parent = [res("a", 1.0, duration_s=1.0), res("b", 0.0, status="failed"), res("c", 1.0, duration_s=1.0)]
    assert gate_failures([res("a", 1.0), res("b", 0.0, status="failed"), res("c", 1.0)], specs, [parent]) == []
    assert gate_failures([res("a", 1.0), res("c", 0.0, status="failed")], specs, [parent]) == [
        "c: score = 0 (failed), needs >= 1"]
    # a test the candidate skips where its parent passed is a breach (skipping is no way past a gate)
    assert gate_failures([res("a", 0.0, status="skipped")], specs, [parent]) == [
        "a: score = no result (skipped), needs >= 1"]


def test_objectives_are_compared_on_the_instances_where_both_have_a_value() -> None:
    # The parent timed out on the expensive instance; the child fixes it: its mean cost over both instances would
    # look 4x higher, but where both have one it is equal and the score rose.
    parent = [res("cheap", 1.0, cost=1.0), res("hard", 0.0, status="timeout")]
    child = [res("cheap", 1.0, cost=1.0), res("hard", 1.0, cost=7.0)]
    assert judge(parent, child, SPECS, "pareto").accepted
    # the other way round: failing where the parent had a cost is a loss on cost, whatever the mean says
    verdict = judge(child, parent, SPECS, "pareto")
    assert not verdict.accepted and "cost" in verdict.losses and "no value where the parent had one" in verdict.detail


def test_instances_that_broke_a_gate_before_are_validated_first_as_a_stage_of_their_own() -> None:
    import random

    from evolver.engine.racing import RaceSettings, plan_race

    ids = [f"v{k}" for k in range(40)]
    race = plan_race(ids, {"v7", "v30"}, random.Random(1), RaceSettings())
    assert set(race.order[:2]) == {"v7", "v30"} and race.ends == (2, 5, 10, 20, 40)
    assert race.stages()[0] == race.order[:2] and race.looks == 3  # the gate-only stage is no look
    plain = plan_race(ids, set(), random.Random(1), RaceSettings())
    assert plain.ends == (5, 10, 20, 40) and plain.looks == 3 and sorted(plain.order) == sorted(ids)


def test_instances_always_in_the_minibatch_come_first_and_the_rest_is_drawn() -> None:
    import random

    from evolver.engine.plans import mutation_plan

    standings = _standings({"seed": [1.0] * 4})
    train = [f"t{k}" for k in range(10)]
    for seed in range(10):
        plan = mutation_plan(standings, train, 3, False, random.Random(seed), {}, always=("t7", "not-train"))
        assert plan.instances[0] == "t7" and len(set(plan.instances)) == 3
    assert mutation_plan(standings, train, 1, False, random.Random(0), {}, always=("t7", "t8")).instances == (
        "t7", "t8")  # every benchmark, even beyond the minibatch size
