"""SQLite state of a run (WAL mode): tasks, candidates, evaluations.

An evaluation row is keyed by (task digest, tree sha, instance, repeat): the same files under the same
evaluator are never run twice unless asked (`--no-cache`). Rows are written one batch at a time in a
transaction, so a killed process loses at most the batch in flight.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    digest TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, config TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY, run TEXT NOT NULL, sha TEXT NOT NULL UNIQUE, tree TEXT NOT NULL,
    branch TEXT, parents TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY, task_digest TEXT NOT NULL, tree TEXT NOT NULL, instance TEXT NOT NULL,
    repeat INTEGER NOT NULL DEFAULT 0, split TEXT, status TEXT NOT NULL, score REAL NOT NULL,
    objectives TEXT NOT NULL, feedback TEXT NOT NULL, profile TEXT NOT NULL, usage TEXT,
    stdout TEXT NOT NULL, stderr TEXT NOT NULL, backend TEXT NOT NULL, trusted INTEGER NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (task_digest, tree, instance, repeat));
CREATE INDEX IF NOT EXISTS evaluations_tree ON evaluations (task_digest, tree);
"""


@dataclass(frozen=True)
class EvaluationRow:
    instance: str
    repeat: int
    split: str | None
    status: str
    score: float
    objectives: dict[str, float | None]
    feedback: str
    profile: list[dict[str, Any]]
    usage: dict[str, float] | None
    stdout: str
    stderr: str
    backend: str
    trusted: bool
    created_at: float = 0.0


@dataclass(frozen=True)
class CandidateRow:
    id: int
    run: str
    sha: str
    tree: str
    branch: str | None
    parents: tuple[str, ...]
    kind: str


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer evolver (schema {row[0]}); upgrade evolver")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- tasks and candidates ------------------------------------------------------------------------
    def record_task(self, digest: str, name: str, path: str, config: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO tasks (digest, name, path, config, created_at) VALUES (?,?,?,?,?)",
                (digest, name, path, json.dumps(config, default=str), time.time()))

    def record_candidate(self, run: str, sha: str, tree: str, branch: str | None, parents: Iterable[str],
                         kind: str) -> CandidateRow:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO candidates (run, sha, tree, branch, parents, kind, created_at) "
                "VALUES (?,?,?,?,?,?,?)", (run, sha, tree, branch, json.dumps(list(parents)), kind, time.time()))
            if branch is not None:
                self._db.execute("UPDATE candidates SET branch=? WHERE sha=?", (branch, sha))
        found = self.candidate(sha)
        assert found is not None
        return found

    def candidate(self, sha: str) -> CandidateRow | None:
        with self._lock:
            r = self._db.execute("SELECT id, run, sha, tree, branch, parents, kind FROM candidates WHERE sha=?",
                                 (sha,)).fetchone()
        if r is None:
            return None
        return CandidateRow(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6])

    def candidates(self, run: str | None = None) -> list[CandidateRow]:
        q = "SELECT id, run, sha, tree, branch, parents, kind FROM candidates"
        args: tuple = ()
        if run is not None:
            q += " WHERE run=?"
            args = (run,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [CandidateRow(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6]) for r in rows]

    # -- evaluations ---------------------------------------------------------------------------------
    def cached(self, task_digest: str, tree: str, instances: Iterable[str]) -> dict[tuple[str, int], EvaluationRow]:
        wanted = set(instances)
        with self._lock:
            rows = self._db.execute(
                "SELECT instance, repeat, split, status, score, objectives, feedback, profile, usage, stdout, "
                "stderr, backend, trusted, created_at FROM evaluations WHERE task_digest=? AND tree=?",
                (task_digest, tree)).fetchall()
        out = {}
        for r in rows:
            if r[0] in wanted:
                out[(r[0], r[1])] = EvaluationRow(
                    instance=r[0], repeat=r[1], split=r[2], status=r[3], score=r[4],
                    objectives=json.loads(r[5]), feedback=r[6], profile=json.loads(r[7]),
                    usage=json.loads(r[8]) if r[8] else None, stdout=r[9], stderr=r[10], backend=r[11],
                    trusted=bool(r[12]), created_at=r[13])
        return out

    def save_evaluations(self, task_digest: str, tree: str, rows: Iterable[EvaluationRow]) -> None:
        now = time.time()
        values = [
            (task_digest, tree, r.instance, r.repeat, r.split, r.status, r.score, json.dumps(r.objectives),
             r.feedback, json.dumps(r.profile), json.dumps(r.usage) if r.usage is not None else None,
             r.stdout, r.stderr, r.backend, int(r.trusted), now)
            for r in rows
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO evaluations (task_digest, tree, instance, repeat, split, status, "
                    "score, objectives, feedback, profile, usage, stdout, stderr, backend, trusted, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def evaluation_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])
