"""Merges of two frontier candidates: the 3-way merge, pair choice, LLM and LLM-free conflict resolution, and
the merge step of real runs (scripted LLM over HTTP, real sandbox, git and SQLite)."""

# ruff: noqa: F811 - pytest fixtures are imported from the shared server module by name
from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import evaluate_source
from llm_server import ScriptedLLMServer, scripted_llm  # noqa: F401

from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.engine.merge_schedule import choose_pair, merges_due, stratified_subsample
from evolver.evidence import gather
from evolver.frontier import CandidateScores
from evolver.hunks import overlapping_hunks
from evolver.proposers.base import ParentInfo, ProposalContext
from evolver.proposers.merge import MergeProposer, ScoreResolver, three_way
from evolver.repo import RunRepo
from evolver.runs import ModelConfig, resume_run, start_run
from evolver.store import SCHEMA_VERSION, Store
from evolver.task import load_task
from evolver.views import show, status

ROOT = Path(__file__).resolve().parent.parent
JOBSHOP = ROOT / "tasks" / "jobshop"

# A dispatching rule of two terms in two functions: each parent of the merge improves one of them.
TWO_TERMS = '''"""Dispatching rule: shortest processing time, adjusted by two terms."""


def urgency(work_remaining: float) -> float:
    """How much to favour a job for the work it has left."""
    return 0.0 * work_remaining


def waiting(time: float, job_ready: float) -> float:
    """How much to hold a job back for the time it has waited."""
    return 1.0 * (time - job_ready)


def priority(duration: float, work_remaining: float, ops_remaining: float, job_work_total: float,
             job_ready: float, time: float, machine_load_remaining: float, next_duration: float,
             next_machine_load: float, next_machine_ready: float) -> float:
    return duration - urgency(work_remaining) + waiting(time, job_ready)
'''


def edit(search: str, replace: str, path: str = "dispatch.py", diagnosis: str = "d", change: str = "c") -> str:
    return (f"## Diagnosis\n{diagnosis}\n## Change\n{change}\n## Edits\n{path}\n<<<<<<< SEARCH\n{search}\n"
            f"=======\n{replace}\n>>>>>>> REPLACE\n")


URGENCY = edit("    return 0.0 * work_remaining", "    return 0.3 * work_remaining",
               diagnosis="Jobs with much work left start late.", change="Favour jobs with much work remaining.")
WAITING = edit("    return 1.0 * (time - job_ready)", "    return 0.3 * (time - job_ready)",
               diagnosis="Jobs that waited are held back too hard.", change="Hold waiting jobs back less.")


def seed_picked_at_iteration_2(frontier_total: int) -> int:
    """A loop seed whose iteration 2 picks the frontier's first member (the seed) as parent whenever the seed
    carries at least 1 of at most `frontier_total` weight: so the second mutation is a sibling of the first."""
    return next(s for s in range(10_000) if random.Random(f"{s}:2").random() < 1 / frontier_total)


def jobshop_two_terms(tmp_path: Path) -> Path:
    task = tmp_path / "jobshop2"
    shutil.copytree(JOBSHOP, task, ignore=shutil.ignore_patterns("__pycache__"))
    (task / "seed" / "dispatch.py").write_text(TWO_TERMS)
    (task / "instances.toml").write_text('train = ["ta06", "ta08"]\n'
                                         'val = ["ta01", "ta02", "ta03", "ta07", "ta11", "ta14"]\n')
    toml = (task / "task.toml").read_text().replace('name = "jobshop"', 'name = "jobshop2"')
    (task / "task.toml").write_text(toml.replace('backend = "auto"', 'backend = "process"'))
    return task


def llm(server: ScriptedLLMServer, repair_turns: int = 1) -> ModelConfig:
    return ModelConfig(model="openai/test-model", api_base=server.api_base, repair_turns=repair_turns)


def evaluator_calls(run_dir: Path) -> int:
    return sqlite3.connect(run_dir / "run.db").execute("SELECT evals_used FROM runs").fetchone()[0]


# -- the jobshop scenario: each parent improves a different function -------------------------------------
def test_disjoint_hunks_merge_cleanly_and_beat_both_parents(scripted_llm, tmp_path: Path) -> None:
    task = jobshop_two_terms(tmp_path)
    run_dir = tmp_path / "run"
    scripted_llm.add(URGENCY, WAITING)
    loop = LoopConfig(minibatch=2, seed=seed_picked_at_iteration_2(7))
    result = start_run(task, llm(scripted_llm), Budget(max_iterations=2), run_dir=run_dir, loop=loop)
    before_merge = result.evals
    result = start_run(task, llm(scripted_llm), Budget(max_iterations=3), run_dir=run_dir)  # continues: merges
    assert len(scripted_llm.requests) == 2  # a clean merge asks no LLM
    doc = status(run_dir)
    assert doc["merges"]["attempts"] == 1 and doc["merges"]["accepted"] == 1
    assert doc["merges"]["pairs"][0]["resolution"] == "clean"
    score = {c["candidate"]: c["objectives"]["score"] for c in doc["candidates"]}
    assert set(score) == {"seed", "c1", "c2", "c3"}
    assert score["c3"] > max(score["c1"], score["c2"]) and min(score["c1"], score["c2"]) > 0
    assert doc["best"] == "c3" and "c3" in doc["frontier"]
    # The merge commit has both parents and each function came from the parent that changed it.
    repo = RunRepo.open_or_init(run_dir / "repo")
    shown = show(run_dir, "c3")
    info = repo.info(shown["sha"])
    # The better parent by validation mean (c1) is the first parent.
    assert info.kind == "merge" and info.parents == (show(run_dir, "c1")["sha"], show(run_dir, "c2")["sha"])
    files = repo.read_files(shown["sha"])["dispatch.py"].decode()
    assert "0.3 * work_remaining" in files and "0.3 * (time - job_ready)" in files
    origin = {c["text"]: c["from"] for c in shown["merge"]["contributions"]}
    assert origin == {"return 0.3 * work_remaining": "c1", "return 0.3 * (time - job_ready)": "c2"}
    assert shown["status"] == "accepted" and shown["detail"].startswith("subsample sum")
    # What the merge cost: the merged candidate on the subsample, then the rest of the validation split.
    merge_calls = result.evals - before_merge
    assert merge_calls == 6  # 5 subsample instances + the 6th validation instance; the parents came from the cache
    log = subprocess.run(["git", "--git-dir", str(run_dir / "repo"), "log", "--graph", "--oneline",
                          "evolver/run/c3"], capture_output=True, text=True, check=True).stdout
    assert "merge of c" in log and log.count("*") == 4  # seed, c1, c2 and the merge


# -- a toy task where both parents change the same line ---------------------------------------------------
TOY_SEED = "def f(x):\n    if x == 10:\n        return 20\n    return 0\n"
ODD = edit("    if x == 10:\n        return 20\n    return 0", "    return 2 * x if x % 2 else 0", path="sol.py",
           diagnosis="Odd inputs return 0 instead of their double.", change="Double odd inputs.")
EVEN = edit("    return 0", "    return 2 * x if x % 2 == 0 and x < 10 else 0", path="sol.py",
            diagnosis="Even inputs return 0 instead of their double.", change="Double even inputs below 10.")
RESOLVED = ("## Diagnosis\nOne doubles odd inputs, the other even ones.\n## Change\nDouble every input.\n"
            "## Edits\nsol.py\n<<<<<<< SEARCH\n    <<CONFLICT 1>>\n=======\n    return 2 * x\n>>>>>>> REPLACE\n")
UNRESOLVED = ("## Diagnosis\n?\n## Change\n?\n## Edits\nsol.py\n<<<<<<< SEARCH\n    <<CONFLICT 7>>\n=======\n"
              "    return 2 * x\n>>>>>>> REPLACE\n")


def toy_task(tmp_path: Path) -> Path:
    task = tmp_path / "toy"
    (task / "seed").mkdir(parents=True)
    (task / "seed" / "sol.py").write_text(TOY_SEED)
    (task / "evaluate.py").write_text(textwrap.dedent(evaluate_source()))
    (task / "instances.toml").write_text('train = ["i5", "i6", "i7", "i8"]\nval = ["i1", "i2", "i3", "i4", "i10"]\n')
    (task / "task.toml").write_text('[task]\nmutable = ["sol.py"]\n[evaluate]\ntimeout_s = 10\n'
                                    '[sandbox]\nbackend = "process"\n')
    return task


def toy_siblings(server: ScriptedLLMServer, tmp_path: Path) -> tuple[Path, Path]:
    """Two accepted siblings of the toy seed whose edits conflict: c1 doubles odd inputs, c2 even ones."""
    task, run_dir = toy_task(tmp_path), tmp_path / "run"
    server.add(ODD, EVEN)
    loop = LoopConfig(minibatch=4, seed=seed_picked_at_iteration_2(6))
    start_run(task, llm(server), Budget(max_iterations=2), run_dir=run_dir, loop=loop)
    assert status(run_dir)["proposals"] == {"accepted:accepted": 2}
    return task, run_dir


def test_conflicting_pair_is_resolved_by_the_llm(scripted_llm, tmp_path: Path) -> None:
    task, run_dir = toy_siblings(scripted_llm, tmp_path)
    scripted_llm.add(RESOLVED)
    start_run(task, llm(scripted_llm), Budget(max_iterations=3), run_dir=run_dir)
    prompt = scripted_llm.prompts()[2]
    assert "CONFLICT 1" in prompt and "Double odd inputs." in prompt and "Double even inputs below 10." in prompt
    assert "    return 2 * x if x % 2 else 0" in prompt and "return 2 * x if x % 2 == 0 and x < 10 else 0" in prompt
    assert "Better than c1 on: i2, i4, i10." in prompt  # what each parent wins
    doc = status(run_dir)
    assert doc["merges"]["pairs"][0]["resolution"] == "llm" and doc["merges"]["accepted"] == 1
    scores = {c["candidate"]: c["objectives"]["score"] for c in doc["candidates"]}
    assert scores["c3"] == 1.0 > max(scores["c1"], scores["c2"])
    shown = show(run_dir, "c3")
    conflict = next(c for c in shown["merge"]["contributions"] if c["from"] == "conflict")
    assert conflict["resolution"] == "llm" and conflict["why"] == "Double every input."
    repo = RunRepo.open_or_init(run_dir / "repo")
    assert repo.read_files(shown["sha"])["sol.py"].decode() == "def f(x):\n    return 2 * x\n"
    assert len(repo.info(shown["sha"]).parents) == 2
    calls = sqlite3.connect(run_dir / "run.db").execute("SELECT purpose FROM llm_calls").fetchall()
    assert [c[0] for c in calls] == ["propose", "propose", "merge"]


def test_bad_resolution_gets_a_repair_turn_then_is_skipped(scripted_llm, tmp_path: Path) -> None:
    task, run_dir = toy_siblings(scripted_llm, tmp_path)
    evals_before = evaluator_calls(run_dir)
    the_seed_again = f"## Diagnosis\nd\n## Change\nc\n\n```python sol.py\n{TOY_SEED}```\n"  # applies to any parent
    scripted_llm.add(UNRESOLVED, UNRESOLVED, the_seed_again)
    start_run(task, llm(scripted_llm, repair_turns=1), Budget(max_iterations=4), run_dir=run_dir)
    repair = scripted_llm.prompts()[3]
    assert "could not be used" in repair and "CONFLICT 7" in repair
    db = sqlite3.connect(run_dir / "run.db")
    merges = db.execute("SELECT m.resolution, p.status, p.reason, p.child_sha FROM merges m JOIN proposals p "
                        "ON p.id = m.proposal_id").fetchall()
    assert merges == [("failed", "failed", "conflict_unresolved", None)]  # one attempt, nothing committed
    # Iteration 4 owes a merge but the only pair was tried: it mutates (the scripted no-op) instead.
    kind, reason = db.execute("SELECT kind, reason FROM proposals WHERE iteration = 4").fetchone()
    assert kind == "mutation" and reason in ("noop", "duplicate")
    assert evaluator_calls(run_dir) == evals_before  # a merge that never resolved costs no evaluation
    assert status(run_dir)["merges"]["outcomes"] == {"failed:conflict_unresolved": 1}


def test_merge_cut_off_before_its_commit_is_tried_again_on_resume(scripted_llm, tmp_path: Path) -> None:
    _, run_dir = toy_siblings(scripted_llm, tmp_path)
    # The state a kill -9 leaves while the merge's LLM call is in flight: the attempt recorded, nothing committed.
    store = Store(run_dir / "run.db")
    c1, c2 = show(run_dir, "c1")["sha"], show(run_dir, "c2")["sha"]
    seed = show(run_dir, "seed")["sha"]
    pid = store.add_proposal("run", 3, "merge", c2, ["i1", "i2"], 2.0)
    store.add_merge(pid, "run", c2, c1, seed, 1.0, 2.0)
    store.update_run("run", iteration=3)
    store.close()
    scripted_llm.add(RESOLVED)
    resume_run(run_dir, budget=Budget(max_iterations=4))
    db = sqlite3.connect(run_dir / "run.db")
    rows = db.execute("SELECT p.iteration, p.status, p.reason FROM merges m JOIN proposals p ON p.id = m.proposal_id "
                      "ORDER BY p.id").fetchall()
    assert rows == [(3, "failed", "interrupted"), (4, "accepted", "accepted")]  # the pair was merged after all


def test_no_merge_flag_and_task_toml(tmp_path: Path) -> None:
    task = toy_task(tmp_path)
    with (task / "task.toml").open("a") as f:
        f.write("[evolve]\nmerge = false\nmax_merges = 2\n")
    loaded = load_task(task)
    assert loaded.evolve.merge is False and loaded.evolve.max_merges == 2
    (task / "task.toml").write_text((task / "task.toml").read_text().replace("merge = false", 'merge = "no"'))
    bad = subprocess.run([sys.executable, "-m", "evolver.cli", "run", str(task), "--model", "builtin",
                          "--max-iterations", "1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "[evolve] merge: expected true or false" in bad.stderr


# -- the LLM-free proposer's merges --------------------------------------------------------------------------
def test_score_resolver_takes_the_better_parents_side_per_conflict() -> None:
    base = {"m.py": b"A = 1\n\n\n\nB = 2\n\n\n\nC = 3\n"}
    a = {"m.py": b"A = 10\n\n\n\nB = 20\n\n\n\nC = 3\n"}
    b = {"m.py": b"A = 1\n\n\n\nB = 21\n\n\n\nC = 30\n"}
    assert overlapping_hunks(base, a, b) == 1
    task = load_task(JOBSHOP)

    def parent(label: str, files: dict, score: float, per: dict) -> ParentInfo:
        return ParentInfo(sha=label, label=label, files=files, texts={}, val=CandidateScores(label, per,
                                                                                           {"score": score}))

    for a_sum, b_sum, expected in ((2.0, 1.0, b"A = 10\n\n\n\nB = 20\n\n\n\nC = 30\n"),
                                   (1.0, 2.0, b"A = 10\n\n\n\nB = 21\n\n\n\nC = 30\n")):
        ctx = ProposalContext(task=task, parents=(parent("c1", a, 0.5, {"i1": a_sum, "i2": 0.0}),
                                                  parent("c2", b, 0.4, {"i1": 0.0, "i2": b_sum})),
                              evidence=gather(()), base=parent("seed", base, 0.0, {}), moved=("i1", "i2"))
        out = MergeProposer(ScoreResolver()).propose(ctx, random.Random(0))
        assert out.ok and out.merge.resolution == "builtin" and out.merge.conflicts == 1
        assert out.changes["m.py"].encode() == expected  # A's and C's hunks kept, B by the better side
        resolved = [c for c in out.merge.contributions if c["from"] == "conflict"]
        assert resolved[0]["resolution"] == ("a" if a_sum > b_sum else "b")


def test_three_way_records_where_each_hunk_came_from() -> None:
    base = {"m.py": b"x = 1\n\n\ny = 2\n", "same.txt": b"s\n"}
    a = {"m.py": b"x = 5\n\n\ny = 2\n", "same.txt": b"s\n", "new.txt": b"n\n"}
    b = {"m.py": b"x = 1\n\n\ny = 7\n", "same.txt": b"t\n"}
    merged = three_way(base, a, b)
    assert not merged.conflicts and merged.changes == {"m.py": "x = 5\n\n\ny = 7\n", "same.txt": b"t\n"}
    sources = sorted((c["path"], c["from"]) for c in merged.contributions)
    assert sources == [("m.py", "a"), ("m.py", "b"), ("new.txt", "a"), ("same.txt", "b")]


def test_pair_choice_skips_ancestors_and_tried_pairs() -> None:
    parents = {"s": (), "a": ("s",), "b": ("s",), "a2": ("a",), "c": ("s",)}
    per = {"a": {"i1": 1.0, "i2": 0.0}, "b": {"i1": 0.0, "i2": 1.0}, "a2": {"i1": 1.0, "i2": 0.5},
           "c": {"i1": 0.5, "i2": 0.5}}
    means = {k: sum(v.values()) / 2 for k, v in per.items()}

    def choose(members, tried=(), triples=(), overlap=lambda a, b, base: 0):
        return choose_pair(members, per, means, ["i1", "i2"], parents, lambda x, y: "s", overlap, set(tried),
                           set(triples), random.Random(0))

    assert choose(["a", "a2"]) is None  # a is a2's ancestor
    pair = choose(["a", "b", "c"])
    assert {pair.a, pair.b} == {"a", "b"} and pair.base == "s"  # each best where the other is not
    assert (pair.a_wins, pair.b_wins) in ((("i1",), ("i2",)), (("i2",), ("i1",)))

    def clash(x: str, y: str, base: str) -> int:
        return int({x, y} == {"a", "b"})

    disjoint = choose(["a", "b", "c"], overlap=clash)
    assert {disjoint.a, disjoint.b} != {"a", "b"}  # diffs touching the same hunks lose to disjoint ones
    again = choose(["a", "b", "c"], tried=[frozenset("ab")])
    assert again is not None and {again.a, again.b} != {"a", "b"}
    assert choose(["a", "b"], triples=[(frozenset("ab"), "s")]) is None
    assert merges_due(3, 1, 5) == 2 and merges_due(9, 5, 5) == 0


def test_stratified_subsample_takes_both_parents_wins_first() -> None:
    a = {"i1": 1.0, "i2": 0.0, "i3": 1.0, "i4": 0.5}
    b = {"i1": 0.0, "i2": 1.0, "i3": 0.0, "i4": 0.5}
    order = ["i1", "i2", "i3", "i4"]
    for seed in range(5):
        two = stratified_subsample(a, b, order, 2, random.Random(seed))
        assert "i2" in two and len(set(two) & {"i1", "i3"}) == 1  # one win of each parent, no tie
    assert stratified_subsample(a, b, order, 9, random.Random(0)) == order  # ties only to fill up


def test_older_run_db_gains_the_merges_table(tmp_path: Path) -> None:
    db_path = tmp_path / "run.db"
    Store(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("DROP TABLE merges")
    db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    db.commit()
    db.close()
    store = Store(db_path)
    assert store.merges("run") == []
    store.close()
    assert sqlite3.connect(db_path).execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == \
        str(SCHEMA_VERSION)


def test_no_merge_flag_turns_merges_off(tmp_path: Path) -> None:
    # The flag reaches the run's settings (tests/test_engine.py checks that such a run never merges).
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "evolver.cli", "run", str(JOBSHOP), "--model", "builtin",
                           "--max-iterations", "1", "--run", str(run_dir), "--no-merge", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert status(run_dir)["merges"]["attempts"] == 0
    assert Store(run_dir / "run.db").run("run").config["loop"]["merge"] is False


def test_files_with_nul_bytes_are_merged_as_whole_files_not_through_git() -> None:
    # git merge-file refuses them; before, that error stopped the run, and resume retried the same pair.
    base = {"data.txt": b"a\x00b\n"}
    merged = three_way(base, {"data.txt": b"a\x00c\n"}, {"data.txt": b"a\x00d\n"})
    assert "data.txt" in merged.conflicted and merged.conflicted["data.txt"].conflicts[0].whole_file


def test_an_llm_outage_during_a_merge_spends_neither_the_attempt_nor_the_pair(scripted_llm, tmp_path: Path) -> None:
    task, run_dir = toy_siblings(scripted_llm, tmp_path)
    # A rejected request: not retried, so the merge's resolution fails with llm_error at once (a rejected key
    # would stop the whole run: no later call could succeed).
    scripted_llm.add({"status": 400}, RESOLVED)
    start_run(task, llm(scripted_llm), Budget(max_iterations=4), run_dir=run_dir)
    db = sqlite3.connect(run_dir / "run.db")
    rows = db.execute("SELECT p.iteration, p.status, p.reason FROM merges m JOIN proposals p ON p.id = m.proposal_id "
                      "ORDER BY p.id").fetchall()
    assert rows == [(3, "failed", "llm_error"), (4, "accepted", "accepted")]  # the same pair, merged after all


def test_a_conflict_in_an_indented_body_resolves_the_same_whichever_way_the_reply_indents() -> None:
    from evolver.proposers.merge import fill_placeholders

    base = {"sol.py": TOY_SEED.encode()}
    a = {"sol.py": b"def f(x):\n    if x == 10:\n        return 20\n    return 1\n"}
    b = {"sol.py": b"def f(x):\n    if x == 10:\n        return 20\n    return 2\n"}
    merged = three_way(base, a, b).conflicted
    (conflict,) = merged["sol.py"].conflicts
    assert conflict.placeholder == "    <<CONFLICT 1>>"
    expected = "def f(x):\n    if x == 10:\n        return 20\n    return 3\n"

    def reply(search: str, replace: str) -> str:
        return f"## Edits\nsol.py\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"

    # As the prompt's example shows it; as the file shows it; and the resolved line given from column 0.
    for search, replace in (("<<CONFLICT 1>>", "    return 3"), ("    <<CONFLICT 1>>", "    return 3"),
                            ("<<CONFLICT 1>>", "return 3")):
        files, problems = fill_placeholders(reply(search, replace), merged)
        assert problems == [] and files["sol.py"] == expected, (search, replace, files)
    # Anything but a placeholder is refused, and so is a placeholder left out.
    _, problems = fill_placeholders(reply("    return 1", "    return 3"), merged)
    assert "expected SEARCH to be one conflict placeholder line" in problems[0]
    _, problems = fill_placeholders("## Edits\n", merged)
    assert len(problems) == 1 and "found none" in problems[0]


def test_a_reply_that_follows_the_merge_example_applies_with_the_right_indentation(scripted_llm,
                                                                                   tmp_path: Path) -> None:
    task, run_dir = toy_siblings(scripted_llm, tmp_path)
    as_in_the_example = ("## Diagnosis\nBoth halves.\n## Change\nDouble every input.\n## Edits\nsol.py\n"
                         "<<<<<<< SEARCH\n<<CONFLICT 1>>\n=======\n    return 2 * x\n>>>>>>> REPLACE\n")
    scripted_llm.add(as_in_the_example)
    start_run(task, llm(scripted_llm), Budget(max_iterations=3), run_dir=run_dir)
    doc = status(run_dir)
    assert doc["merges"]["pairs"][0]["outcome"] == "accepted:accepted", doc["merges"]
    merged = show(run_dir, doc["merges"]["pairs"][0]["merge"])
    files = RunRepo.open_or_init(run_dir / "repo").read_files(merged["sha"])
    assert files["sol.py"].decode() == "def f(x):\n    return 2 * x\n"
