"""The engine's one path for every proposal, in process and fast: scripted proposers, the function evaluator,
a real git repository and SQLite store (no sandbox, no LLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_kit import Kit, Scripted, constants, make_engine, set_constant

from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.proposers.base import Proposal, ProposalContext
from evolver.proposers.merge import MergeProposer, ScoreResolver
from evolver.repo import RunRepo
from evolver.views import show, status

EXAMPLES = {"t1": {"w": 2.0, "b": 0.0}, "t2": {"w": 2.0, "b": 1.0}, "v1": {"w": 2.0, "b": 0.0},
            "v2": {"w": 2.0, "b": 1.0}}
# Two siblings: c1 (WEIGHT 2) is best on t1/v1, the seed stays best on t2/v2 (its WEIGHT 1 is right there), so
# with loop seed 0 the second proposal starts from the seed; c2 (BIAS 1) gets t2/v2 right. Scored by exact hits.
SIBLING_EXAMPLES = {"t1": {"w": 2.0, "b": 0.0}, "t2": {"w": 1.0, "b": 1.0}, "v1": {"w": 2.0, "b": 0.0},
                    "v2": {"w": 1.0, "b": 1.0}}
SIBLING_LOOP = LoopConfig(minibatch=2, seed=0, accept="ties")


def hits(files, example):
    c = constants(files)
    return (float(c["WEIGHT"] == example["w"]) + float(c["BIAS"] == example["b"])) / 2, None


def siblings() -> Scripted:
    return Scripted([set_constant("WEIGHT", 2.0), set_constant("BIAS", 1.0)])


def run(kit: Kit) -> str:
    kit.engine.start(kit.seed)
    try:
        return kit.engine.run()
    finally:
        kit.close()


def outcomes(kit: Kit) -> list[tuple[str, str]]:
    from evolver.store import Store

    store = Store(kit.run_dir / "run.db")
    try:
        return [(p.status, p.reason) for p in store.proposals("run")]
    finally:
        store.close()


def test_an_improving_mutation_is_accepted_and_status_agrees_with_the_engine(tmp_path: Path) -> None:
    proposer = Scripted([set_constant("WEIGHT", 2.0), set_constant("WEIGHT", 0.5)])
    kit = make_engine(tmp_path, proposer, examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_iterations=2),
                      loop=LoopConfig(minibatch=2, merge=False))
    engine = kit.engine
    run(kit)
    assert outcomes(kit) == [("accepted", "accepted"), ("rejected", "worse")]
    doc = status(kit.run_dir)
    assert doc["best"] == "c1"
    engine_view = {engine.label(s): dict(engine.standings.scores(s).objectives) for s in engine.standings.candidates()}
    assert {c["candidate"]: c["objectives"] for c in doc["candidates"]} == engine_view
    assert doc["frontier"] == [engine.label(m) for m in engine.standings.frontier().members]
    # The proposer saw records: its parent's results, the evidence, and (second time) the lesson of the first.
    first, second = proposer.seen
    assert sorted(r.instance for r in first.results) == ["t1", "t2"] and first.parent.label == "seed"
    assert first.evidence.scores and "weight_error" in first.evidence.passing_feedback[0][2]
    assert second.lessons[0].reason == "accepted" and second.lessons[0].operator == "set"
    shown = show(kit.run_dir, "c1")
    assert shown["operator"] == "set" and shown["proposer"] == "scripted" and "WEIGHT = 2.0" in shown["diff"]


@pytest.mark.parametrize("kind", ["mutation", "merge"])
def test_a_non_mutable_edit_is_rejected_whoever_proposes_it(tmp_path: Path, kind: str) -> None:
    forbidden = Proposal(changes={"data.txt": "changed\n"}, change="edit the data")
    if kind == "mutation":
        kit = make_engine(tmp_path, Scripted([forbidden]), examples=EXAMPLES, val=["v1", "v2"],
                          budget=Budget(max_iterations=1), loop=LoopConfig(merge=False))
    else:
        # Two siblings of the seed, each best somewhere, then a merge whose "merger" edits a frozen file.
        kit = make_engine(tmp_path, siblings(), examples=SIBLING_EXAMPLES, val=["v1", "v2"],
                          budget=Budget(max_iterations=3), merger=Scripted([forbidden], name="merge"),
                          loop=SIBLING_LOOP, score=hits)
    run(kit)
    failed = [(s, r) for s, r in outcomes(kit) if r == "not_mutable"]
    assert failed == [("failed", "not_mutable")]
    repo = RunRepo.open_or_init(kit.run_dir / "repo")
    for branch in repo.branches():
        assert repo.read_files(repo.resolve(branch))["data.txt"] == b"fixed data\n"  # never committed


def test_syntax_noop_and_duplicate_are_caught_by_the_engine(tmp_path: Path) -> None:
    same = set_constant("WEIGHT", 2.0)
    proposer = Scripted([Proposal(changes={"sol.py": "def f(:\n"}, change="broken"),
                         lambda ctx: Proposal(changes={"sol.py": ctx.parent_files["sol.py"]}, change="nothing"),
                         same, same])
    kit = make_engine(tmp_path, proposer, examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_iterations=4),
                      loop=LoopConfig(minibatch=2, merge=False))
    run(kit)
    got = outcomes(kit)
    assert got[:3] == [("failed", "syntax"), ("failed", "noop"), ("accepted", "accepted")]
    # The same change again: from c3 it changes nothing, from the seed it recreates c3; never committed twice.
    assert got[3] in (("failed", "noop"), ("failed", "duplicate"))


def test_a_clean_merge_of_two_siblings_is_a_two_parent_commit(tmp_path: Path) -> None:
    kit = make_engine(tmp_path, siblings(), examples=SIBLING_EXAMPLES, val=["v1", "v2"],
                      budget=Budget(max_iterations=3), merger=MergeProposer(ScoreResolver()), loop=SIBLING_LOOP,
                      score=hits)
    run(kit)
    doc = status(kit.run_dir)
    assert doc["merges"]["attempts"] == 1, (doc["merges"], outcomes(kit))
    merged = doc["merges"]["pairs"][0]
    assert merged["parents"] == ["c1", "c2"] and merged["base"] == "seed"
    assert merged["resolution"] == "clean" and merged["outcome"] == "accepted:accepted"
    shown = show(kit.run_dir, merged["merge"])
    assert len(shown["parents"]) == 2 and shown["proposer"] == "merge"
    files = RunRepo.open_or_init(kit.run_dir / "repo").read_files(shown["sha"])
    assert b"WEIGHT = 2.0" in files["sol.py"] and b"BIAS = 1.0" in files["sol.py"]  # both parents' changes


def test_the_evaluator_never_runs_more_than_the_budget(tmp_path: Path) -> None:
    proposer = Scripted([set_constant("WEIGHT", 1.0 + k / 10) for k in range(1, 40)])
    kit = make_engine(tmp_path, proposer, examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_evals=15),
                      loop=LoopConfig(minibatch=2, merge=False))
    calls = kit.calls
    reason = run(kit)
    assert len(calls) <= 15 and "evaluator-call budget" in reason
    assert status(kit.run_dir)["evals_used"] == len(calls)


def test_resume_judges_a_committed_child_from_its_stored_plan(tmp_path: Path) -> None:
    class Killed(BaseException):
        pass

    def kill_after_commit(ctx: ProposalContext) -> Proposal:
        return set_constant("WEIGHT", 2.0)(ctx)

    kit = make_engine(tmp_path, Scripted([kill_after_commit]), examples=EXAMPLES, val=["v1", "v2"],
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=2, merge=False))
    engine = kit.engine
    original = engine._judge

    def die(p, plan):  # the process dies after the child is committed, before it is judged
        raise Killed

    engine._judge = die  # type: ignore[method-assign]
    engine.start(kit.seed)
    with pytest.raises(Killed):
        engine.run()
    engine._judge = original  # type: ignore[method-assign]
    kit.close()
    assert outcomes(kit) == [("pending", "pending")]
    # The same run directory, a new process: resume finishes the pending child from its stored plan.
    from evolver.runs import resume_run

    resume_run(kit.run_dir, budget=Budget(max_iterations=1), make_evaluator=_function_evaluator)
    assert outcomes(kit)[0] == ("accepted", "accepted")


def _function_evaluator(task, store):
    from engine_kit import closeness

    from evolver.function_eval import FunctionEvaluator

    return FunctionEvaluator(closeness, EXAMPLES, store, task.digest, None)
