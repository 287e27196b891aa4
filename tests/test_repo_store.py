"""Candidates as git commits (real git) and the SQLite store (real file, WAL)."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from evolver.errors import UserInputError
from evolver.repo import RunRepo, candidate_branch, seed_branch
from evolver.store import EvaluationRow, Store


def _seed(tmp_path: Path) -> Path:
    seed = tmp_path / "seed"
    (seed / "pkg").mkdir(parents=True)
    (seed / "main.py").write_text("print('hi')\n")
    (seed / "pkg" / "util.py").write_text("X = 1\n")
    (seed / "__pycache__").mkdir()
    (seed / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    return seed


def test_seed_root_commit_candidates_and_trailers(tmp_path: Path) -> None:
    repo = RunRepo.open_or_init(tmp_path / "run" / "repo")
    seed_sha = repo.commit_folder(_seed(tmp_path), "seed", run="r1")
    repo.set_branch(seed_branch("r1"), seed_sha)
    info = repo.info(seed_sha)
    assert info.parents == () and info.kind == "seed"
    assert sorted(repo.read_files(seed_sha)) == ["main.py", "pkg/util.py"]  # caches excluded

    child = repo.commit_changes(seed_sha, {"pkg/util.py": b"X = 2\n", "new.py": b"Y = 3\n"}, "raise X",
                                kind="mutation", body="diagnosis: X too small", run="r1")
    repo.set_branch(candidate_branch("r1", 1), child)
    cinfo = repo.info(child)
    assert cinfo.parents == (seed_sha,) and cinfo.kind == "mutation"
    assert f"Evolver-Parent: {seed_sha}" in cinfo.message
    assert repo.resolve("evolver/r1/c1") == child
    assert repo.resolve(child[:10]) == child
    log = subprocess.run(["git", f"--git-dir={repo.path}", "log", "--format=%H", "evolver/r1/c1"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert log == [child, seed_sha]

    # Same files, different commit: same tree, which is the cache key.
    again = repo.commit_changes(seed_sha, {"pkg/util.py": b"X = 2\n", "new.py": b"Y = 3\n"}, "again",
                                kind="mutation")
    assert again != child and repo.tree_sha(again) == repo.tree_sha(child)

    deleted = repo.commit_changes(child, {"new.py": None}, "drop", kind="mutation")
    assert "new.py" not in repo.read_files(deleted)

    with tarfile.open(fileobj=io.BytesIO(repo.archive(child))) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert names == ["main.py", "new.py", "pkg/util.py"]
        assert tar.extractfile("pkg/util.py").read() == b"X = 2\n"  # type: ignore[union-attr]

    merge = repo.commit_changes(child, {}, "merge", kind="merge", extra_parents=(deleted,))
    assert repo.info(merge).parents == (child, deleted)


def test_unknown_ref_is_a_user_error(tmp_path: Path) -> None:
    repo = RunRepo.open_or_init(tmp_path / "repo")
    sha = repo.commit_folder(_seed(tmp_path), "seed")
    repo.set_branch("evolver/x/seed", sha)
    with pytest.raises(UserInputError, match="'nope' unknown; branches here include evolver/x/seed"):
        repo.resolve("nope")


def _row(instance: str, score: float, status: str = "ok") -> EvaluationRow:
    return EvaluationRow(instance=instance, repeat=0, split="train", status=status, score=score,
                         objectives={"gap": 1.5, "nan": None}, feedback="fb", profile=[{"function": "f"}],
                         usage={"cpu_s": 0.1}, stdout="out", stderr="", backend="process", trusted=True)


def test_store_roundtrip_wal_and_cache_key(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    store = Store(db)
    store.save_evaluations("k1", "tree1", [_row("a", 0.5), _row("b", 0.7)])
    got = store.cached("k1", "tree1", ["a", "b", "c"])
    assert set(got) == {("a", 0), ("b", 0)}
    assert got[("a", 0)].objectives == {"gap": 1.5, "nan": None} and got[("a", 0)].usage == {"cpu_s": 0.1}
    assert store.cached("k2", "tree1", ["a"]) == {}  # another evaluator: nothing reused
    store.save_evaluations("k1", "tree1", [_row("a", 0.9)])  # --no-cache replaces
    assert store.cached("k1", "tree1", ["a"])[("a", 0)].score == 0.9
    cand = store.record_candidate("r", "sha1", "tree1", "evolver/r/seed", [], "seed")
    assert cand.branch == "evolver/r/seed" and store.candidates("r")[0].sha == "sha1"
    store.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 2


def test_evaluation_frames_are_stored_and_old_style_rows_still_build(tmp_path: Path) -> None:
    store = Store(tmp_path / "run.db")
    frames = [{"file": "pkg/a.py", "line": 3, "function": "outer"}, {"file": "pkg/a.py", "line": 9,
                                                                      "function": "inner"}]
    with_frames = replace(_row("a", 0.0, "error"), frames=frames)
    positional = EvaluationRow("b", 0, "val", "ok", 1.0, {}, "", [], None, "", "", "process", True)
    store.save_evaluations("k", "t", [with_frames, positional])
    got = store.cached("k", "t", ["a", "b"])
    assert got[("a", 0)].frames == frames and got[("b", 0)].frames == []
    assert got[("a", 0)].trusted is True and got[("a", 0)].profile == [{"function": "f"}]
    store.close()


def test_proposals_by_id_with_parents_proposer_and_operator(tmp_path: Path) -> None:
    store = Store(tmp_path / "run.db")
    old_style = store.add_proposal("r", 1, "builtin", "p1", ["i1"], 0.5)
    p = store.proposal(old_style)
    assert p is not None and p.parents == ("p1",) and p.proposer == "builtin" and p.operator == ""
    assert p.minibatch == ["i1"] and p.status == "pending" and p.parent_score == 0.5
    new = store.add_proposal("r", 2, "mutation", "p1", ["i2"], None, parents=["p1"], proposer="builtin",
                             operator="perturb")
    store.update_proposal(new, child_sha="c1", status="rejected", reason="worse", files=["a.py"],
                          operator="swap_op", parents=("p1",))
    q = store.proposal(new)
    assert q is not None and (q.kind, q.proposer, q.operator) == ("mutation", "builtin", "swap_op")
    assert q.files == ["a.py"] and q.parents == ("p1",) and q.updated_at >= q.created_at
    assert store.proposal(999) is None
    assert [x.id for x in store.proposals("r", status="rejected")] == [new]
    with pytest.raises(ValueError, match=r"unknown proposal fields \['id', 'run'\]"):
        store.update_proposal(new, id=5, run="other")
    with pytest.raises(ValueError, match="unknown run fields"):
        store.update_run("r", task_path="/elsewhere")
    store.close()


def test_a_merge_by_id_and_its_proposals_two_parents(tmp_path: Path) -> None:
    store = Store(tmp_path / "run.db")
    pid = store.add_proposal("r", 3, "merge", "a", ["v1"], 1.0)  # as the engine calls it: one parent given
    store.add_merge(pid, "r", "a", "b", "base", 1.0, 0.5)
    store.update_merge(pid, conflicts=1, resolution="builtin", contributions=[{"path": "x.py", "from": "b"}])
    m = store.merge(pid)
    assert m is not None and (m.parent_a, m.parent_b, m.base, m.conflicts) == ("a", "b", "base", 1)
    assert m.contributions == [{"path": "x.py", "from": "b"}] and store.merges("r") == [m]
    p = store.proposal(pid)
    assert p is not None and p.parents == ("a", "b") and p.proposer == "merge"
    assert store.merge(pid + 1) is None
    store.close()
