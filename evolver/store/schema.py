"""run.db's schema as an ordered list of migrations, version N -> N + 1, applied when a store is opened.

`CREATE TABLE IF NOT EXISTS` alone never adds a column to a file that already has the table, so every change
of the schema is a migration here, and a new file is built by running them all from version 0: new and old
files take the same path and end with the same columns. Each migration runs in its own transaction, taken
with BEGIN IMMEDIATE (the write lock) and re-reading the version inside it, so two processes opening one
file at once migrate it once; every step also tolerates finding its own work done (a table or column that
exists), which makes applying it twice harmless. A file newer than this code is refused, never written.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import EvolverError


class SchemaError(EvolverError):
    """run.db cannot be used by this evolver (written by a newer one, or its version is unreadable)."""


_V1_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tasks (
        digest TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, config TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS candidates (
        id INTEGER PRIMARY KEY, run TEXT NOT NULL, sha TEXT NOT NULL UNIQUE, tree TEXT NOT NULL,
        branch TEXT, parents TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS evaluations (
        id INTEGER PRIMARY KEY, task_digest TEXT NOT NULL, tree TEXT NOT NULL, instance TEXT NOT NULL,
        repeat INTEGER NOT NULL DEFAULT 0, split TEXT, status TEXT NOT NULL, score REAL NOT NULL,
        objectives TEXT NOT NULL, feedback TEXT NOT NULL, profile TEXT NOT NULL, usage TEXT,
        stdout TEXT NOT NULL, stderr TEXT NOT NULL, backend TEXT NOT NULL, trusted INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (task_digest, tree, instance, repeat))""",
    "CREATE INDEX IF NOT EXISTS evaluations_tree ON evaluations (task_digest, tree)",
)
_V2_TABLES = (
    """CREATE TABLE IF NOT EXISTS runs (
        name TEXT PRIMARY KEY, task_path TEXT NOT NULL, task_digest TEXT NOT NULL, config TEXT NOT NULL,
        state TEXT NOT NULL, iteration INTEGER NOT NULL DEFAULT 0, evals_used INTEGER NOT NULL DEFAULT 0,
        usd_used REAL NOT NULL DEFAULT 0, elapsed_s REAL NOT NULL DEFAULT 0, stop_reason TEXT,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS proposals (
        id INTEGER PRIMARY KEY, run TEXT NOT NULL, iteration INTEGER NOT NULL, kind TEXT NOT NULL,
        parent_sha TEXT NOT NULL, child_sha TEXT, branch TEXT, status TEXT NOT NULL, reason TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '', diagnosis TEXT NOT NULL DEFAULT '', change TEXT NOT NULL DEFAULT '',
        minibatch TEXT NOT NULL, parent_score REAL, child_score REAL, val_score REAL,
        files TEXT NOT NULL DEFAULT '[]', failure_kinds TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS proposals_run ON proposals (run, iteration)",
    """CREATE TABLE IF NOT EXISTS llm_calls (
        id INTEGER PRIMARY KEY, run TEXT, proposal_id INTEGER, purpose TEXT NOT NULL, model TEXT NOT NULL,
        request_hash TEXT NOT NULL, latency_s REAL NOT NULL, attempts INTEGER NOT NULL, prompt_tokens INTEGER,
        completion_tokens INTEGER, cost_usd REAL, finish_reason TEXT, error TEXT, created_at REAL NOT NULL)""",
)
_V3_TABLES = (
    """CREATE TABLE IF NOT EXISTS merges (
        proposal_id INTEGER PRIMARY KEY, run TEXT NOT NULL, parent_a TEXT NOT NULL, parent_b TEXT NOT NULL,
        base TEXT NOT NULL, conflicts INTEGER NOT NULL DEFAULT 0, resolution TEXT NOT NULL DEFAULT '',
        contributions TEXT NOT NULL DEFAULT '[]', parent_a_score REAL, parent_b_score REAL,
        created_at REAL NOT NULL)""",
)
_V4_COLUMNS = (
    ("proposals", "parents", "TEXT NOT NULL DEFAULT '[]'"),
    ("proposals", "proposer", "TEXT NOT NULL DEFAULT ''"),
    ("proposals", "operator", "TEXT NOT NULL DEFAULT ''"),
    ("evaluations", "frames", "TEXT NOT NULL DEFAULT '[]'"),
)
_V5_COLUMNS = (
    ("llm_calls", "error_kind", "TEXT"),
    ("llm_calls", "attempt_errors", "TEXT NOT NULL DEFAULT '[]'"),
    ("llm_calls", "cached", "INTEGER NOT NULL DEFAULT 0"),
    ("runs", "stop_kind", "TEXT"),
)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. When the disk is full (or on an I/O error) SQLite
    may already have rolled the whole transaction back itself: a ROLLBACK then fails with "no transaction is
    active", and raising that would hide the error the user can act on ("database or disk is full")."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with suppress(sqlite3.Error):  # the error being raised is the one to report
                db.execute("ROLLBACK")
        raise


def _statements(statements: tuple[str, ...]) -> Callable[[sqlite3.Connection], None]:
    def apply(db: sqlite3.Connection) -> None:
        for statement in statements:  # one by one: executescript() would commit the migration's transaction
            db.execute(statement)

    return apply


def _add_column(db: sqlite3.Connection, table: str, column: str, ddl: str) -> None:
    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")


def _lineage(db: sqlite3.Connection) -> None:
    """Proposal lineage and traceback frames. Old proposals get their parents (a merge's pair from the merges
    table, else the one parent), and the proposer that made them, which schema 3 kept as the proposal's kind."""
    for table, column, ddl in _V4_COLUMNS:
        _add_column(db, table, column, ddl)
    pairs = {pid: [a, b] for pid, a, b in db.execute("SELECT proposal_id, parent_a, parent_b FROM merges")}
    todo = db.execute("SELECT id, parent_sha FROM proposals WHERE parents = '[]'").fetchall()
    db.executemany("UPDATE proposals SET parents = ? WHERE id = ?",
                   [(json.dumps(pairs.get(pid, [parent])), pid) for pid, parent in todo])
    db.execute("UPDATE proposals SET proposer = kind WHERE proposer = ''")


def _reservations(db: sqlite3.Connection) -> None:
    """Evaluator calls promised to batches in flight, written before a batch starts: after a kill -9 they count
    as spent, so the evaluator never runs more often than the budget allows."""
    _add_column(db, "runs", "evals_reserved", "INTEGER NOT NULL DEFAULT 0")


def _llm_faults(db: sqlite3.Connection) -> None:
    """What kind of failure an LLM call met and the error of each failed attempt; the kind of a run's stop.
    Old calls keep no kind (their errors were never classified) and no attempt errors; a call that made no HTTP
    request and did not fail was a cache hit. Old runs keep their stop text and no kind: it is never guessed
    back from the text."""
    for table, column, ddl in _V5_COLUMNS:
        _add_column(db, table, column, ddl)
    db.execute("UPDATE llm_calls SET cached = 1 WHERE attempts = 0 AND error IS NULL")


@dataclass(frozen=True)
class Migration:
    version: int  # the version the file has once this step is applied
    what: str
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tasks, candidates, evaluations", _statements(_V1_TABLES)),
    Migration(2, "runs, proposals, LLM calls", _statements(_V2_TABLES)),
    Migration(3, "merges", _statements(_V3_TABLES)),
    Migration(4, "proposal parents, proposer and operator; evaluation traceback frames", _lineage),
    Migration(5, "evaluator calls reserved by batches in flight", _reservations),
    Migration(6, "LLM calls' error kinds, attempt errors and cache hits; the kind of a run's stop", _llm_faults),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "migrations must go up by one"


def schema_version(db: sqlite3.Connection, path: Path | str = "run.db") -> int:
    """The version a file says it has; 0 for a new, empty file."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise SchemaError(f"{path}: meta 'schema' is {row[0]!r}, expected a whole number; this is not a run.db "
                          "evolver wrote, or it was damaged: use another --run directory") from None


def _refuse_newer(found: int, path: Path | str) -> None:
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema version {found}, newer than the {SCHEMA_VERSION} this evolver knows: it was "
            "written by a newer evolver. Upgrade evolver to use this run, or start a new one with another --run "
            "directory.")


def migrate(db: sqlite3.Connection, path: Path | str = "run.db") -> tuple[int, ...]:
    """Bring the file to SCHEMA_VERSION; returns the versions this call applied (none when it was current).

    `db` must be in autocommit mode (isolation_level=None): each step is its own explicit transaction."""
    found = schema_version(db, path)
    _refuse_newer(found, path)
    applied: list[int] = []
    while found < SCHEMA_VERSION:
        with transaction(db):
            found = schema_version(db, path)  # under the write lock: another process may have migrated it
            _refuse_newer(found, path)
            if found < SCHEMA_VERSION:
                step = MIGRATIONS[found]
                step.apply(db)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(step.version),))
                applied.append(step.version)
                found = step.version
    return tuple(applied)
