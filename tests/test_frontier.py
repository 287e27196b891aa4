"""Frontiers and parent selection: GEPA's per-instance rule, objective Pareto front, hybrid, failures."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from evolver.frontier import (
    CandidateScores,
    best_per_instance,
    build_frontier,
    objective_front,
    scores_from_results,
)

NAN, INF = float("nan"), float("inf")
INSTANCES = ("a", "b", "c")


def cs(name: str, a, b, c, **objectives) -> CandidateScores:
    return CandidateScores(name, {"a": a, "b": b, "c": c}, objectives)


def test_instance_front_ties_pruning_and_weights() -> None:
    cands = [
        cs("seed", 0.5, 0.5, 0.5),
        cs("c1", 0.9, 0.2, 0.5),   # best on a, tied best on c
        cs("c2", 0.1, 0.8, 0.5),   # best on b, tied best on c
        cs("c3", 0.9, 0.1, 0.1),   # tied on a with c1 only: dominated by c1
    ]
    best = best_per_instance(cands, INSTANCES)
    assert best == {"a": {"c1", "c3"}, "b": {"c2"}, "c": {"seed", "c1", "c2"}}
    f = build_frontier(cands, INSTANCES, {"score": "max"})
    assert f.members == ("c1", "c2")  # seed's only win (c) is shared with survivors; c3's with c1
    assert f.weights == (2.0, 2.0)


def test_nan_inf_and_missing_are_failures_never_best() -> None:
    cands = [cs("x", NAN, INF, None), cs("y", 0.0, -1.0, None), cs("z", None, None, None)]
    best = best_per_instance(cands, INSTANCES)
    assert best == {"a": {"y"}, "b": {"y"}}
    f = build_frontier(cands, INSTANCES, {"score": "max"})
    assert f.members == ("y",)
    empty = build_frontier([cs("x", NAN, NAN, NAN)], INSTANCES, {"score": "max"})
    with pytest.raises(ValueError, match="frontier is empty"):
        empty.select(random.Random(0))


def test_identical_candidates_keep_the_oldest() -> None:
    f = build_frontier([cs("old", 1, 1, 1), cs("new", 1, 1, 1)], INSTANCES, {"score": "max"})
    assert f.members == ("old",)


def test_objective_front_directions_and_missing() -> None:
    directions = {"score": "max", "runtime_s": "min"}
    cands = [
        cs("fast", 0, 0, 0, score=0.6, runtime_s=1.0),
        cs("good", 0, 0, 0, score=0.9, runtime_s=3.0),
        cs("worse", 0, 0, 0, score=0.5, runtime_s=2.0),   # dominated by fast
        cs("broken", 0, 0, 0, score=NAN, runtime_s=0.1),  # fastest, but its primary score is a failure
        cs("none", 0, 0, 0),                              # no objectives at all: not a member
        cs("slow", 0, 0, 0, score=0.95, runtime_s=None),  # a missing secondary objective counts as worst
    ]
    assert objective_front(cands, directions) == ["fast", "good", "slow"]


def test_hybrid_adds_weights() -> None:
    cands = [cs("p", 1.0, 0.0, 0.0, score=0.33, cost=5.0), cs("q", 0.0, 1.0, 1.0, score=0.66, cost=9.0)]
    f = build_frontier(cands, INSTANCES, {"score": "max", "cost": "min"}, mode="hybrid")
    assert dict(zip(f.members, f.weights, strict=True)) == {"p": 2.0, "q": 3.0}
    with pytest.raises(ValueError, match="frontier mode"):
        build_frontier(cands, INSTANCES, {}, mode="islands")


def test_selection_is_seeded_and_proportional() -> None:
    cands = [cs("p", 1, 0, 0), cs("q", 0, 1, 1)]
    f = build_frontier(cands, INSTANCES, {"score": "max"})
    first = [f.select(random.Random(42)) for _ in range(5)]
    assert first == [f.select(random.Random(42)) for _ in range(5)]
    rng = random.Random(7)
    counts = Counter(f.select(rng) for _ in range(3000))
    assert 0.28 < counts["p"] / 3000 < 0.39  # weight 1 of 3


def test_ties_on_score_go_to_the_better_other_objectives() -> None:
    from evolver.frontier import rank_key

    directions = {"score": "max", "duration_s": "min", "size": "max"}
    fast = {"score": 1.0, "duration_s": 0.2, "size": 1.0}
    slow = {"score": 1.0, "duration_s": 0.9, "size": 5.0}
    unmeasured = {"score": 1.0, "duration_s": None, "size": 9.0}
    assert max([slow, unmeasured, fast], key=lambda o: rank_key(o, directions)) is fast
    assert rank_key({"score": 0.5, "duration_s": 0.0}, directions) < rank_key(slow, directions)


def test_skipped_tests_keep_the_other_objectives() -> None:
    from types import SimpleNamespace as R

    results = [R(instance="t1", status="ok", score=1.0, objectives={"duration_s": 0.5}),
               R(instance="t2", status="skipped", score=0.0, objectives={"duration_s": 0.0})]
    scores = scores_from_results("c", results, {"score": "max", "duration_s": "min"})
    assert scores.objectives["duration_s"] == 0.5  # the skipped test neither erases nor dilutes it


def test_instances_every_candidate_ties_on_carry_no_weight() -> None:
    ties = {f"t{k}": 1.0 for k in range(10)}  # every policy solves these alike: they tell no one apart
    seed = CandidateScores("seed", {**ties, "s1": 1.0, "a1": 0.0, "a2": 0.0, "a3": 0.0})
    c1 = CandidateScores("c1", {**ties, "s1": 0.0, "a1": 1.0, "a2": 1.0, "a3": 1.0})
    c2 = CandidateScores("c2", {**ties, "s1": 0.0, "a1": 0.5, "a2": 0.5, "a3": 0.5})
    f = build_frontier([seed, c1, c2], [*ties, "s1", "a1", "a2", "a3"], {"score": "max"})
    # Counting the ties, the seed would weigh 11 against c1's 13: almost as likely a parent as c1.
    assert dict(zip(f.members, f.weights, strict=True)) == {"seed": 1.0, "c1": 3.0}
    alone = build_frontier([seed], [*ties, "s1"], {"score": "max"})  # nothing tells candidates apart yet
    assert alone.members == ("seed",) and alone.weights == (11.0,)
