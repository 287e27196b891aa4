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
    assert len(calls) <= 15 and reason.kind == "budget" and "evaluator-call budget" in reason.message
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

    def die(*_):  # the process dies after the child is committed, before it is judged
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


def _builtin_kit(tmp_path: Path, loop: LoopConfig, budget: Budget) -> Kit:
    from evolver.proposers.builtin import BuiltinProposer

    examples = {f"t{k}": {"w": 1.5 + k / 4, "b": k / 3} for k in range(6)}
    examples |= {f"v{k}": {"w": 1.5 + k / 4, "b": k / 3} for k in range(6)}
    return make_engine(tmp_path, BuiltinProposer(), examples=examples, val=[f"v{k}" for k in range(6)],
                       budget=budget, merger=MergeProposer(ScoreResolver()) if loop.merge else None, loop=loop)


def test_builtin_run_merges_only_eligible_pairs_once(tmp_path: Path) -> None:
    kit = _builtin_kit(tmp_path, LoopConfig(max_merges=50, seed=1), Budget(max_evals=300))
    run(kit)
    from evolver.store import Store

    store = Store(kit.run_dir / "run.db")
    merges = store.merges("run")
    repo = RunRepo.open_or_init(kit.run_dir / "repo")
    assert merges, "a builtin run with accepted mutations attempts merges"
    pairs = [frozenset((m.parent_a, m.parent_b)) for m in merges]
    assert len(pairs) == len(set(pairs))  # never the same pair (nor, with it, the same triple) twice
    for m in merges:
        assert m.resolution in ("clean", "builtin", "failed")
        assert repo.merge_base(m.parent_a, m.parent_b) == m.base not in (m.parent_a, m.parent_b)  # no ancestors
    for c in store.candidates("run"):
        if c.kind == "merge":
            assert len(repo.info(c.sha).parents) == 2
    store.close()


def test_without_merges_no_merge_is_attempted(tmp_path: Path) -> None:
    kit = _builtin_kit(tmp_path, LoopConfig(merge=False, seed=1), Budget(max_evals=300))
    run(kit)
    doc = status(kit.run_dir)
    assert doc["proposals"]["accepted:accepted"] >= 2  # merges would have been due
    assert doc["merges"]["attempts"] == 0


def test_same_seed_same_selections(tmp_path: Path) -> None:
    picks = []
    for attempt in range(2):
        proposer = Scripted([set_constant("BIAS", 0.1 * (k + 1)) for k in range(4)])
        kit = make_engine(tmp_path / str(attempt), proposer, examples=EXAMPLES, val=["v1", "v2"],
                          budget=Budget(max_iterations=4), loop=LoopConfig(minibatch=1, seed=7, merge=False))
        engine = kit.engine
        run(kit)
        # Commit shas differ between runs (timestamps): compare the parents' labels and the minibatches.
        picks.append([(engine.label(c.parent.sha), [r.instance for r in c.results]) for c in proposer.seen])
    assert picks[0] == picks[1] and len(picks[0]) == 4


def test_parallel_iterations_keep_store_repo_and_budget_consistent(tmp_path: Path) -> None:
    proposer = Scripted([set_constant("WEIGHT", 1.0 + k / 20) for k in range(1, 60)])
    kit = make_engine(tmp_path, proposer, examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_evals=40),
                      loop=LoopConfig(minibatch=2, workers=3, merge=False))
    calls = kit.calls
    reason = run(kit)
    assert len(calls) <= 40 and reason.kind == "budget" and "evaluator-call budget" in reason.message
    import sqlite3

    db = sqlite3.connect(kit.run_dir / "run.db")
    # Two iterations in flight may evaluate the same (tree, instance) once each: calls spent >= rows kept.
    assert 0 < db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] <= len(calls)
    rows = db.execute("SELECT id, iteration, status, child_sha, branch FROM proposals").fetchall()
    assert len({r[1] for r in rows}) == len(rows)  # every iteration number once
    repo = RunRepo.open_or_init(kit.run_dir / "repo")
    for _, _, status_, child, branch in rows:
        assert status_ != "pending" or child is None or reason.message.startswith("evaluator-call budget")
        if child:
            assert repo.resolve(branch) == child
    trees = db.execute("SELECT tree FROM candidates").fetchall()
    assert len(trees) == len(set(trees))  # no two candidates with the same files
    assert status(kit.run_dir)["evals_used"] == len(calls)


def test_a_proposer_out_of_ideas_stops_the_run(tmp_path: Path) -> None:
    from evolver.config import Defaults

    # No-ops and duplicates cost no evaluator call: without this rule such a run would never end.
    same = lambda ctx: Proposal(changes={"sol.py": ctx.parent_files["sol.py"]}, change="the same")  # noqa: E731
    kit = make_engine(tmp_path, Scripted([same] * 500), examples=EXAMPLES, val=["v1", "v2"],
                      budget=Budget(max_evals=1000), loop=LoopConfig(minibatch=2, merge=False))
    reason = run(kit)
    assert reason.kind == "nothing_new"
    assert reason.message.startswith(f"nothing new: the last {Defaults.nothing_new_stop} proposals")
    assert len(outcomes(kit)) == Defaults.nothing_new_stop


def test_a_budget_that_cannot_validate_five_children_is_said_at_start(tmp_path: Path) -> None:
    examples = {f"t{k}": {"w": 2.0, "b": 0.0} for k in range(3)} | {f"v{k}": {"w": 2.0, "b": 0.0} for k in range(40)}
    warned: list[str] = []
    kit = make_engine(tmp_path, Scripted([]), examples=examples, val=[f"v{k}" for k in range(40)],
                      budget=Budget(max_evals=100), loop=LoopConfig(minibatch=3, merge=False))
    kit.engine.on_event = lambda e: warned.append(e.message) if e.kind == "warning" else None
    run(kit)
    (advice,) = [w for w in warned if w.startswith("budget plan")]
    assert "pays for about 1 accepted children" in advice and "each costs 40 calls to validate" in advice
    assert "--budget-evals 270 or more" in advice
    roomy = make_engine(tmp_path / "roomy", Scripted([]), examples=EXAMPLES, val=["v1", "v2"],
                        budget=Budget(max_evals=1000), loop=LoopConfig(merge=False))
    roomy.engine.on_event = lambda e: warned.append(e.message) if e.kind == "warning" else None
    run(roomy)
    assert sum(w.startswith("budget plan") for w in warned) == 1


def test_a_path_cannot_smuggle_index_records_into_a_commit(tmp_path: Path) -> None:
    # A newline in a changed path would start a record of its own in git's index input: refused as unsafe.
    injected = "sol.py\n100644 " + "0" * 40 + "\tdata.txt"
    kit = make_engine(tmp_path, Scripted([Proposal(changes={injected: "X = 1\n"}, change="smuggle")]),
                      examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_iterations=1),
                      loop=LoopConfig(merge=False))
    run(kit)
    assert outcomes(kit) == [("failed", "not_mutable")]
    repo = RunRepo.open_or_init(kit.run_dir / "repo")
    assert [b for b in repo.branches() if not b.endswith("/seed")] == []


def test_a_child_exactly_as_good_as_its_parent_is_a_tie_not_worse(tmp_path: Path) -> None:
    comment = lambda ctx: Proposal(changes={"sol.py": ctx.parent_files["sol.py"] + "# a comment\n"},  # noqa: E731
                                   change="comment")
    kit = make_engine(tmp_path, Scripted([comment]), examples=EXAMPLES, val=["v1", "v2"],
                      budget=Budget(max_iterations=1), loop=LoopConfig(minibatch=2, merge=False))
    run(kit)
    assert outcomes(kit) == [("rejected", "tie")]


def test_a_merge_that_reproduces_a_parent_does_not_take_the_iteration(tmp_path: Path) -> None:
    reproduce = Proposal(failure="duplicate", detail="the merge has the same files as c1", change="merge")
    proposer = Scripted([set_constant("WEIGHT", 2.0), set_constant("BIAS", 1.0), set_constant("WEIGHT", 3.0)])
    kit = make_engine(tmp_path, proposer, examples=SIBLING_EXAMPLES, val=["v1", "v2"],
                      budget=Budget(max_iterations=3), merger=Scripted([reproduce], name="merge"),
                      loop=SIBLING_LOOP, score=hits)
    run(kit)
    import sqlite3

    rows = sqlite3.connect(kit.run_dir / "run.db").execute(
        "SELECT iteration, kind, reason FROM proposals ORDER BY id").fetchall()
    assert rows[2:] == [(3, "merge", "duplicate"), (3, "mutation", rows[3][2])]  # iteration 3 mutated too
    assert len(proposer.seen) == 3
