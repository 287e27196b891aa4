"""Schema versions of run.db: a file written by older code is migrated when opened, a newer one is refused, and
opening twice (or from two processes at once) migrates once.

tests/data/run_schema3.tar.gz holds `task/` and `run/` (repo/, run.db, lessons.jsonl) of a real run made by
the schema-3 code (before proposals had parents, proposer and operator, and evaluations frames):

    evolver run task --model builtin --budget-evals 40 --seed 18 --run run     (EVOLVER_BACKEND=process)

on a task whose train/val instances reward two functions of sol.py separately, so that two siblings were
accepted and merged: it has accepted, rejected and pending proposals and one clean merge. The absolute paths
run.db held (runs.task_path, the lessons file in runs.config, tasks.path) were replaced by PLACEHOLDER, which
unpack() turns back into the folder it extracts to.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from evolver import cli
from evolver.engine.budget import Budget
from evolver.runs import resume_run
from evolver.store import MIGRATIONS, SCHEMA_VERSION, SchemaError, Store, migrate, schema_version
from evolver.views import export, status

FIXTURE = Path(__file__).resolve().parent / "data" / "run_schema3.tar.gz"
PLACEHOLDER = "/EVOLVER_FIXTURE"
NEW_COLUMNS = {"proposals": {"parents", "proposer", "operator"}, "evaluations": {"frames"},
               "llm_calls": {"error_kind", "attempt_errors", "cached"}, "runs": {"evals_reserved", "stop_kind"}}


def unpack(tmp_path: Path) -> Path:
    """The fixture's run directory, extracted under tmp_path with its stored paths pointing there."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    db = sqlite3.connect(tmp_path / "run" / "run.db")
    real = str(tmp_path)
    db.execute("UPDATE runs SET task_path = replace(task_path, ?, ?), config = replace(config, ?, ?)",
               (PLACEHOLDER, real, PLACEHOLDER, real))
    db.execute("UPDATE tasks SET path = replace(path, ?, ?)", (PLACEHOLDER, real))
    db.commit()
    db.close()
    return tmp_path / "run"


def dump(db_path: Path) -> dict[str, list[dict]]:
    """Every row of every table but meta, by column name, ordered by rowid."""
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name != 'meta'")]
    out = {t: [dict(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in tables}
    db.close()
    return out


def file_version(db_path: Path) -> int:
    db = sqlite3.connect(db_path)
    try:
        return schema_version(db)
    finally:
        db.close()


def test_a_schema3_run_db_is_migrated_on_open_and_back_filled(tmp_path: Path) -> None:
    db_path = unpack(tmp_path) / "run.db"
    assert file_version(db_path) == 3
    before = dump(db_path)
    store = Store(db_path)
    assert store.upgraded == tuple(range(4, SCHEMA_VERSION + 1))
    after = dump(db_path)
    assert file_version(db_path) == SCHEMA_VERSION
    # The same rows, the same values in every old column; the new columns hold their back-fill.
    assert before.keys() == after.keys()
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table
        for old, new in zip(rows, after[table], strict=True):
            assert set(new) - set(old) == NEW_COLUMNS.get(table, set()), table
            assert {k: new[k] for k in old} == old, table
    pairs = {m["proposal_id"]: [m["parent_a"], m["parent_b"]] for m in before["merges"]}
    assert pairs, "the fixture has a merge"
    for p in after["proposals"]:
        assert json.loads(p["parents"]) == pairs.get(p["id"], [p["parent_sha"]])
        assert p["proposer"] == p["kind"] and p["proposer"] in ("builtin", "merge") and p["operator"] == ""
    assert all(e["frames"] == "[]" for e in after["evaluations"])
    # ... and read back as records.
    merge_id = next(iter(pairs))
    merged = store.proposal(merge_id)
    assert merged is not None and merged.kind == "merge" and merged.parents == tuple(pairs[merge_id])
    assert len(set(merged.parents)) == 2 and merged.parents[0] == merged.parent_sha
    merge = store.merge(merge_id)
    assert merge is not None and (merge.parent_a, merge.parent_b) == merged.parents
    assert merge.resolution == "clean" and merge == store.merges("run")[0]
    mutation = store.proposals("run", status="rejected")[0]
    assert mutation.parents == (mutation.parent_sha,) and mutation.proposer == "builtin"
    assert store.proposal(mutation.id) == mutation and store.merge(mutation.id) is None
    assert store.proposal(10_000) is None and store.merge(10_000) is None
    row = next(iter(store.cached(after["evaluations"][0]["task_digest"], after["evaluations"][0]["tree"],
                                 [after["evaluations"][0]["instance"]]).values()))
    assert row.frames == []
    store.close()


def test_views_export_and_resume_work_on_a_migrated_run(tmp_path: Path) -> None:
    run_dir = unpack(tmp_path)
    # Its evaluations are stored under the key of the harness of their day (this code's harness has another):
    # views read them under the key the run's seed was evaluated under.
    summary = status(run_dir)  # the first open migrates
    assert summary["best"] is not None and len(summary["candidates"]) == 4
    assert file_version(run_dir / "run.db") == SCHEMA_VERSION
    json.dumps(summary, default=str)
    store = Store(run_dir / "run.db")
    merged = store.proposals("run", status="accepted")[-1]
    assert merged.kind == "merge" and merged.child_sha is not None
    assert merged.child_sha in json.dumps(summary, default=str)  # the best candidate: the merge
    export(run_dir, "best", patch=str(tmp_path / "best.patch"))
    assert "+    return 2.05 * x" in (tmp_path / "best.patch").read_text()
    run = store.run("run")
    assert run is not None
    used, known = run.evals_used, {p.id for p in store.proposals("run")}
    store.close()
    # Resumed under this harness, the accepted candidates are validated again (results of another harness are
    # never reused), then the run goes on: every call within the budget.
    result = resume_run(run_dir, budget=Budget(max_evals=used + 40))
    assert used < result.evals <= used + 40
    store = Store(run_dir / "run.db")
    new = [p for p in store.proposals("run") if p.id not in known]
    assert new, "the resumed run made proposals"
    for p in store.proposals("run"):  # old and new alike: every proposal knows its parents and its proposer
        assert p.parents and p.parents[0] == p.parent_sha and p.proposer
        assert len(p.parents) == (2 if p.kind == "merge" and store.merge(p.id) is not None else 1)
    store.close()


def test_a_newer_run_db_is_refused_with_a_clear_message(tmp_path: Path, capsys) -> None:
    run_dir = unpack(tmp_path)
    db_path = run_dir / "run.db"
    db = sqlite3.connect(db_path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    before = dump(db_path)
    with pytest.raises(SchemaError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than .*Upgrade evolver"):
        Store(db_path)
    assert file_version(db_path) == SCHEMA_VERSION + 1 and dump(db_path) == before  # nothing written
    capsys.readouterr()
    assert cli.main(["status", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "written by a newer evolver" in err and "Traceback" not in err


def test_a_second_open_migrates_nothing_and_steps_are_idempotent(tmp_path: Path) -> None:
    db_path = unpack(tmp_path) / "run.db"
    Store(db_path).close()
    migrated = dump(db_path)
    store = Store(db_path)
    assert store.upgraded == ()
    store.close()
    assert dump(db_path) == migrated
    # Applying the last step again on a file that already has its columns changes nothing.
    db = sqlite3.connect(db_path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION - 1),))
    db.commit()
    db.close()
    store = Store(db_path)
    assert store.upgraded == (SCHEMA_VERSION,)
    store.close()
    assert dump(db_path) == migrated


def test_a_new_file_runs_every_migration_and_ends_with_the_migrated_columns(tmp_path: Path) -> None:
    fresh = Store(tmp_path / "fresh.db")
    assert fresh.upgraded == tuple(m.version for m in MIGRATIONS)
    fresh.close()
    old = unpack(tmp_path / "old") / "run.db"
    Store(old).close()

    def shape(path: Path) -> dict[str, list[str]]:
        db = sqlite3.connect(path)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: [c[1] for c in db.execute(f"PRAGMA table_info({t})")] for t in tables}

    assert shape(tmp_path / "fresh.db") == shape(old)
    db = sqlite3.connect(tmp_path / "fresh.db")
    db.isolation_level = None
    assert migrate(db) == ()
    db.close()


OPEN_AT_ONCE = """
import os, sys, time
from evolver.store import Store
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
store = Store(sys.argv[1])
print(",".join(map(str, store.upgraded)))
store.close()
"""


@pytest.mark.parametrize("which", ["schema3", "new"])
def test_processes_opening_one_file_at_once_migrate_it_once(tmp_path: Path, which: str) -> None:
    db_path = unpack(tmp_path) / "run.db" if which == "schema3" else tmp_path / "new" / "run.db"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(db_path), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(0.5)  # every process is waiting on the start line
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    applied = [int(v) for out, _ in outs for v in out.strip().split(",") if v]
    first = 4 if which == "schema3" else 1
    assert sorted(applied) == list(range(first, SCHEMA_VERSION + 1))  # each step once, by whichever process
    assert file_version(db_path) == SCHEMA_VERSION
    if which == "schema3":
        store = Store(db_path)
        assert all(len(p.parents) == (2 if p.kind == "merge" else 1) for p in store.proposals("run"))
        store.close()


def test_schema4_llm_calls_and_runs_gain_kinds_without_guessing(tmp_path: Path) -> None:
    """Migration 6: LLM calls get an error kind, their attempts' errors and a cache flag; runs a stop kind. Old
    rows keep what they had; only a call that sent nothing and did not fail is marked a cache hit."""
    path = tmp_path / "run.db"
    db = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:4]:
        step.apply(db)
    db.execute("INSERT INTO meta (key, value) VALUES ('schema', '4')")
    db.execute("INSERT INTO runs (name, task_path, task_digest, config, state, stop_reason, created_at, updated_at) "
               "VALUES ('run', 't', 'd', '{}', 'stopped', 'time budget: 60 s of 60 s', 1, 1)")
    calls = [(0, None), (3, "openai/x: gave up after 3 attempts"), (2, None)]  # a hit, a failure, a retried call
    db.executemany("INSERT INTO llm_calls (run, purpose, model, request_hash, latency_s, attempts, error, "
                   "created_at) VALUES ('run', 'propose', 'openai/x', 'h', 0.1, ?, ?, 1)", calls)
    db.close()
    store = Store(path)
    try:
        assert store.upgraded == (5, 6)  # 5: the evaluator-call journal; 6: LLM fault kinds
        rows = store.llm_calls("run")
        assert [(r.attempts, r.error, r.cached) for r in rows] == [(a, e, a == 0 and e is None) for a, e in calls]
        assert all(r.error_kind is None and r.attempt_errors == [] and r.proposal_id is None for r in rows)
        assert store.llm_totals("run") == {"calls": 3, "requests": 5, "failed": 1, "prompt_tokens": 0,
                                           "completion_tokens": 0, "usd": 0.0}
        run = store.run("run")
        assert run is not None and run.stop_reason == "time budget: 60 s of 60 s" and run.stop_kind is None
    finally:
        store.close()
