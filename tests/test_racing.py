"""Staged validation and acceptance by objectives through the engine's real path (function evaluator, real git
repository and SQLite store)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from engine_kit import Kit, Scripted, constants, make_engine, set_constant, write_task

from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.proposers.base import Proposal, ProposalContext
from evolver.store import Store
from evolver.views import status

VAL = [f"v{k}" for k in range(16)]


def fit(files, example):
    """1 when BIAS is the example's b, 0.5 otherwise; `cost` is WEIGHT (lower is cheaper)."""
    c = constants(files)
    return (1.0 if c["BIAS"] == example["b"] else 0.5), {"objectives": {"cost": c["WEIGHT"]}}


def examples(train_b: float, val_b: float) -> dict[str, dict[str, float]]:
    return {**{f"t{k}": {"b": train_b} for k in range(3)}, **{v: {"b": val_b} for v in VAL}}


def proposals(kit: Kit) -> list[tuple[str, str, str]]:
    store = Store(kit.run_dir / "run.db")
    try:
        return [(p.status, p.reason, p.detail) for p in store.proposals("run")]
    finally:
        store.close()


def run(kit: Kit) -> None:
    kit.engine.start(kit.seed)
    try:
        kit.engine.run()
    finally:
        kit.close()


def test_a_child_that_overfits_its_minibatch_stops_after_the_first_stage_and_never_joins(tmp_path: Path) -> None:
    # BIAS 1 is right on every train instance and wrong on every validation one: accepted on the minibatch,
    # then confidently below the seed after the first stage (5 of 16).
    kit = make_engine(tmp_path, Scripted([set_constant("BIAS", 1.0)]), examples=examples(1.0, 0.0), val=VAL,
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=3, merge=False), score=fit)
    run(kit)
    [(state, reason, detail)] = proposals(kit)
    assert (state, reason) == ("rejected", "raced")
    assert "stopped after 5 of 16 validation instances" in detail and "best on none" in detail
    # the seed's 16 validation calls and 3 minibatch calls, the child's 3 minibatch calls and 5 validation calls
    assert len(kit.calls) == 16 + 3 + 3 + 5
    shown = status(kit.run_dir)
    assert shown["frontier"] == ["seed"] and len(shown["candidates"]) == 1  # nothing invented for the 12 skipped


def test_without_racing_the_same_child_is_validated_in_full(tmp_path: Path) -> None:
    kit = make_engine(tmp_path, Scripted([set_constant("BIAS", 1.0)]), examples=examples(1.0, 0.0), val=VAL,
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=3, merge=False, race=False), score=fit)
    run(kit)
    assert [p[:2] for p in proposals(kit)] == [("accepted", "accepted")]
    assert len(kit.calls) == 16 + 3 + 3 + 16


def test_a_child_better_on_validation_is_validated_in_full_and_accepted(tmp_path: Path) -> None:
    kit = make_engine(tmp_path, Scripted([set_constant("BIAS", 1.0)]), examples=examples(1.0, 1.0), val=VAL,
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=3, merge=False), score=fit)
    run(kit)
    assert [p[:2] for p in proposals(kit)] == [("accepted", "accepted")]
    assert len(kit.calls) == 16 + 3 + 3 + 16
    assert status(kit.run_dir)["best"] == "c1"


def _task(tmp_path: Path, objectives: str) -> Path:
    root = write_task(tmp_path / "task", train=["t0", "t1", "t2"], val=VAL)
    (root / "task.toml").write_text('[task]\nmutable = ["sol.py"]\n' + objectives)
    return root


def test_pareto_is_the_default_with_two_optimized_objectives(tmp_path: Path) -> None:
    # Equal accuracy and cheaper: accepted; cheaper but less accurate: rejected as a trade-off.
    root = _task(tmp_path, '[objectives]\nscore = "max"\ncost = "min"\n')
    def cheaper_but_wrong(ctx: ProposalContext) -> Proposal:
        return Proposal(changes={"sol.py": "WEIGHT = 0.25\n\n\nBIAS = 2.0\n"}, diagnosis="d", change="c")

    kit = make_engine(tmp_path, Scripted([set_constant("WEIGHT", 0.5), cheaper_but_wrong]),
                      examples=examples(0.0, 0.0), val=VAL, budget=Budget(max_iterations=2),
                      loop=LoopConfig(minibatch=3, merge=False), score=fit, task_dir=root)
    assert kit.engine.rule == "pareto"
    kit.engine.start(kit.seed)
    kit.engine.run()
    rows = proposals(kit)
    kit.close()
    assert rows[0][:2] == ("accepted", "accepted") and "cost mean 0.5 vs 1" in rows[0][2]
    assert rows[1][:2] == ("rejected", "tradeoff") and "score sum 1.5 vs 3" in rows[1][2]


def test_strict_ignores_a_cheaper_child_when_cost_is_only_reported(tmp_path: Path) -> None:
    root = _task(tmp_path, '[objectives]\nscore = "max"\ncost = { direction = "min", role = "report" }\n')
    kit = make_engine(tmp_path, Scripted([set_constant("WEIGHT", 0.5)]), examples=examples(0.0, 0.0), val=VAL,
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=3, merge=False), score=fit,
                      task_dir=root)
    assert kit.engine.rule == "strict"
    run(kit)
    assert [p[:2] for p in proposals(kit)] == [("rejected", "tie")]


def _gated_kit(tmp_path: Path, fragile: str, breaks: Callable[[float], bool]) -> Kit:
    """BIAS 1 is right everywhere; `kept` (a gate, at least 1) is 0 on the `fragile` instance for a candidate
    whose BIAS `breaks` it."""
    def gated(files, example):
        bias = constants(files)["BIAS"]
        kept = 0.0 if example.get("fragile") and breaks(bias) else 1.0
        return (1.0 if bias == example["b"] else 0.5), {"objectives": {"kept": kept}}

    root = _task(tmp_path, '[objectives]\nscore = "max"\nkept = { role = "gate", at_least = 1.0 }\n')
    ex = examples(1.0, 1.0)
    ex[fragile] = {"b": 1.0, "fragile": 1.0}
    return make_engine(tmp_path, Scripted([set_constant("BIAS", 1.0)]), examples=ex, val=VAL,
                       budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=3, merge=False), score=gated,
                       task_dir=root)


def test_a_gate_broken_during_validation_stops_it_and_the_child_is_never_accepted(tmp_path: Path) -> None:
    # `kept` is 0 on v3 for a child with BIAS 1 (right everywhere else): better on every other instance, but a
    # gate breach rejects it, at the stage that saw it.
    kit = _gated_kit(tmp_path, "v3", lambda bias: bias == 1.0)
    run(kit)
    [(state, reason, detail)] = proposals(kit)
    assert (state, reason) == ("rejected", "gate") and "v3: kept = 0 (ok), needs >= 1" in detail
    assert status(kit.run_dir)["frontier"] == ["seed"]


def test_a_validation_the_budget_cuts_between_stages_is_finished_by_resume(tmp_path: Path) -> None:
    from evolver.function_eval import FunctionEvaluator
    from evolver.runs import resume_run

    # seed 16 + parent minibatch 3 + child 3 + first stage 5 = 27; the second stage (5) does not fit in 30.
    ex = examples(1.0, 1.0)
    kit = make_engine(tmp_path, Scripted([set_constant("BIAS", 1.0)]), examples=ex, val=VAL,
                      budget=Budget(max_evals=30), loop=LoopConfig(minibatch=3, merge=False), score=fit)
    fn = kit.engine.evaluator.fn  # the same function: the same cache key
    run(kit)
    [(state, reason, detail)] = proposals(kit)
    assert (state, reason) == ("failed", "budget") and "validation stopped after 5 of 16 instances" in detail
    result = resume_run(kit.run_dir, budget=Budget(max_evals=40),
                        make_evaluator=lambda t, s: FunctionEvaluator(fn, ex, s, t.digest, None))
    assert proposals(kit)[0][:2] == ("accepted", "accepted") and result.best_branch.endswith("/c1")
    assert result.evals == 27 + 11  # the 5 validated before the stop came from the store


def test_a_seed_that_breaks_a_gate_is_said_at_start_and_does_not_condemn_its_children(tmp_path: Path) -> None:
    # `kept` is 0 on v11 for every candidate (the seed included): only what held before must hold.
    kit = _gated_kit(tmp_path, "v11", lambda bias: True)
    events = []
    kit.engine.on_event = events.append
    run(kit)
    assert [p[:2] for p in proposals(kit)] == [("accepted", "accepted")]
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("the seed breaks a gate on 1 validation instance(s) (v11: kept = 0" in w for w in warnings)


def test_the_next_child_runs_the_instance_a_gate_broke_on_first_and_stops_there(tmp_path: Path) -> None:
    # c1 (BIAS 1) breaks the gate on v3 and is rejected; c2 (BIAS 1 and WEIGHT 3: other files, the same breach)
    # passes its minibatch too, and its validation starts with v3 alone: one evaluation, then the stop.
    def both(ctx: ProposalContext) -> Proposal:
        text = ctx.parent_files["sol.py"].replace("WEIGHT = 1.0", "WEIGHT = 3.0").replace("BIAS = 0.0", "BIAS = 1.0")
        return Proposal(changes={"sol.py": text}, diagnosis="d", change="c")

    kit = _gated_kit(tmp_path, "v3", lambda bias: bias == 1.0)
    kit.engine.proposer.replies.append(both)
    kit.engine.budget = Budget(max_iterations=2)
    kit.engine.start(kit.seed)
    kit.engine.run()
    c2 = kit.store.proposals("run")[1]
    tree = kit.engine._ref(c2.child_sha).tree
    validated = kit.store.cached(kit.engine.evaluator.cache_key, tree, VAL)
    kit.close()
    assert [p[:2] for p in proposals(kit)] == [("rejected", "gate"), ("rejected", "gate")]
    assert [i for i, _ in validated] == ["v3"]


def test_a_candidate_that_breaks_a_gate_is_never_best_nor_exported_without_force(tmp_path: Path) -> None:
    from evolver.errors import UserInputError
    from evolver.views import export, show

    kit = _gated_kit(tmp_path, "v11", lambda bias: bias == 0.0)  # the seed breaks v11, the child keeps it
    run(kit)
    doc = status(kit.run_dir)
    assert doc["best"] == "c1" and doc["frontier"] == ["c1"]
    assert {c["candidate"]: c["gate_breaches"] for c in doc["candidates"]} == {"seed": 1, "c1": 0}
    seed = show(kit.run_dir, "seed")
    assert seed["gate_breaches"] == ["v11: kept = 0 (ok), needs >= 1"]
    with pytest.raises(UserInputError, match=r"seed breaks the task's gates on 1 validation instance\(s\)"):
        export(kit.run_dir, "seed", patch=str(tmp_path / "seed.patch"))
    assert export(kit.run_dir, "seed", patch=str(tmp_path / "seed.patch"), force=True)["bytes"] == 0
    assert export(kit.run_dir, "best", patch=str(tmp_path / "best.patch"))["bytes"] > 0


def test_a_child_rejected_for_a_gate_shows_why_and_is_not_exported_without_force(tmp_path: Path) -> None:
    from evolver.errors import UserInputError
    from evolver.views import export, show

    kit = _gated_kit(tmp_path, "v3", lambda bias: bias == 1.0)
    run(kit)
    assert show(kit.run_dir, "c1")["reason"] == "gate"
    with pytest.raises(UserInputError, match="c1 was rejected for breaking the task's gates"):
        export(kit.run_dir, "c1", branch="try")
    assert export(kit.run_dir, "c1", branch="try", force=True)["branch"] == "try"


def test_show_gives_the_failing_instances_with_their_feedback(tmp_path: Path) -> None:
    from evolver.views import show

    def fragile(files, example):
        if example.get("boom"):
            raise ValueError("no answer for this one")
        return fit(files, example)

    ex = examples(1.0, 1.0)
    ex["v5"] = {"b": 1.0, "boom": 1.0}
    kit = make_engine(tmp_path, Scripted([]), examples=ex, val=VAL, budget=Budget(max_iterations=1),
                      loop=LoopConfig(minibatch=3, merge=False), score=fragile)
    run(kit)
    [failure] = show(kit.run_dir, "seed")["failures"]
    assert failure["instance"] == "v5" and failure["status"] == "error"
    assert "ValueError: no answer for this one" in failure["feedback"]


def test_show_through_a_pipe_keeps_ids_with_brackets_whole(tmp_path: Path, capsys) -> None:
    from evolver import cli

    long_id = "tests/test_lexer.py::test_every_token_kind_round_trips[" + "x" * 150 + "]"
    ex = {"t0": {"b": 0.0}, "v[1]": {"b": 0.0}, long_id: {"b": 0.0}}
    kit = make_engine(tmp_path, Scripted([]), examples=ex, val=["v[1]", long_id], budget=Budget(max_iterations=1),
                      loop=LoopConfig(minibatch=1, merge=False), score=fit)
    run(kit)
    assert cli.main(["show", str(kit.run_dir), "seed"]) == 0
    out = capsys.readouterr().out
    assert "v[1]" in out and "…" not in out
    assert out.count("x") >= 150 and "round_trips[" in out  # folded onto lines if need be, never cut


def test_the_apply_hint_of_an_exported_patch_applies_it(tmp_path: Path) -> None:
    import shlex
    import subprocess

    from evolver.views import export

    kit = make_engine(tmp_path, Scripted([set_constant("BIAS", 1.0)]), examples=examples(1.0, 1.0), val=VAL,
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=3, merge=False), score=fit)
    run(kit)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # the task folder inside a git repository
    hint = export(kit.run_dir, "best", patch=str(tmp_path / "best.patch"))["apply"]
    command = hint.split(" (or ")[0]
    assert command.startswith(f"git -C {tmp_path.resolve()} apply --directory=task/seed ")
    subprocess.run(shlex.split(command), check=True)
    assert "BIAS = 1.0" in (tmp_path / "task" / "seed" / "sol.py").read_text()
