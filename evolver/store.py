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

SCHEMA_VERSION = 3  # 3: merges
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
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY, task_path TEXT NOT NULL, task_digest TEXT NOT NULL, config TEXT NOT NULL,
    state TEXT NOT NULL, iteration INTEGER NOT NULL DEFAULT 0, evals_used INTEGER NOT NULL DEFAULT 0,
    usd_used REAL NOT NULL DEFAULT 0, elapsed_s REAL NOT NULL DEFAULT 0, stop_reason TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    id INTEGER PRIMARY KEY, run TEXT NOT NULL, iteration INTEGER NOT NULL, kind TEXT NOT NULL,
    parent_sha TEXT NOT NULL, child_sha TEXT, branch TEXT, status TEXT NOT NULL, reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', diagnosis TEXT NOT NULL DEFAULT '', change TEXT NOT NULL DEFAULT '',
    minibatch TEXT NOT NULL, parent_score REAL, child_score REAL, val_score REAL,
    files TEXT NOT NULL DEFAULT '[]', failure_kinds TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS proposals_run ON proposals (run, iteration);
CREATE TABLE IF NOT EXISTS llm_calls (
    id INTEGER PRIMARY KEY, run TEXT, proposal_id INTEGER, purpose TEXT NOT NULL, model TEXT NOT NULL,
    request_hash TEXT NOT NULL, latency_s REAL NOT NULL, attempts INTEGER NOT NULL, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost_usd REAL, finish_reason TEXT, error TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS merges (
    proposal_id INTEGER PRIMARY KEY, run TEXT NOT NULL, parent_a TEXT NOT NULL, parent_b TEXT NOT NULL,
    base TEXT NOT NULL, conflicts INTEGER NOT NULL DEFAULT 0, resolution TEXT NOT NULL DEFAULT '',
    contributions TEXT NOT NULL DEFAULT '[]', parent_a_score REAL, parent_b_score REAL, created_at REAL NOT NULL);
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


# -- runs, proposals, LLM calls ---------------------------------------------------------------------------
PROPOSAL_COLUMNS = ("id", "run", "iteration", "kind", "parent_sha", "child_sha", "branch", "status", "reason",
                    "detail", "diagnosis", "change", "minibatch", "parent_score", "child_score", "val_score",
                    "files", "failure_kinds", "created_at", "updated_at")
_JSON_COLUMNS = {"minibatch", "files", "failure_kinds"}


@dataclass(frozen=True)
class RunRow:
    name: str
    task_path: str
    task_digest: str
    config: dict[str, Any]
    state: str  # running | stopped | finished
    iteration: int
    evals_used: int
    usd_used: float
    elapsed_s: float
    stop_reason: str | None


@dataclass(frozen=True)
class ProposalRow:
    id: int
    run: str
    iteration: int
    kind: str
    parent_sha: str
    child_sha: str | None
    branch: str | None
    status: str  # pending | accepted | rejected | failed
    reason: str  # accepted | worse | patch_failed | noop | syntax | crashed | llm_error | interrupted ...
    detail: str
    diagnosis: str
    change: str
    minibatch: list[str]
    parent_score: float | None
    child_score: float | None
    val_score: float | None
    files: list[str]
    failure_kinds: list[str]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class MergeRow:
    """A merge attempt; its outcome (status, reason, scores, child) is on the proposal row with the same id."""

    proposal_id: int
    run: str
    parent_a: str  # the merge commit's first parent
    parent_b: str
    base: str  # the merge base both diffs are taken against
    conflicts: int
    resolution: str  # clean | llm | builtin | failed ("" while in flight)
    contributions: list[dict[str, Any]]  # per file or hunk: which parent it came from, how a conflict was resolved
    parent_a_score: float | None  # sums on the validation subsample
    parent_b_score: float | None


class _RunRecords:
    """Run-level records (runs, proposals, LLM calls), kept in the same SQLite file as the evaluations so
    one transaction log holds a run's whole state. Mixed into Store, which provides `_db` and `_lock`."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def create_run(self, name: str, task_path: str, task_digest: str, config: dict[str, Any]) -> RunRow:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (name, task_path, task_digest, config, state, created_at, updated_at) "
                "VALUES (?,?,?,?, 'running', ?, ?)", (name, task_path, task_digest, json.dumps(config), now, now))
        run = self.run(name)
        assert run is not None
        return run

    def run(self, name: str) -> RunRow | None:
        with self._lock:
            r = self._db.execute(
                "SELECT name, task_path, task_digest, config, state, iteration, evals_used, usd_used, elapsed_s, "
                "stop_reason FROM runs WHERE name=?", (name,)).fetchone()
        if r is None:
            return None
        return RunRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])

    def update_run(self, name: str, **fields: Any) -> None:
        allowed = {"state", "iteration", "evals_used", "usd_used", "elapsed_s", "stop_reason", "config"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown run fields {sorted(bad)}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE runs SET {sets}, updated_at=? WHERE name=?",
                             (*fields.values(), time.time(), name))

    def add_proposal(self, run: str, iteration: int, kind: str, parent_sha: str, minibatch: list[str],
                     parent_score: float | None) -> int:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO proposals (run, iteration, kind, parent_sha, status, reason, minibatch, parent_score, "
                "created_at, updated_at) VALUES (?,?,?,?, 'pending', 'pending', ?,?,?,?)",
                (run, iteration, kind, parent_sha, json.dumps(minibatch), parent_score, now, now))
            return int(cur.lastrowid or 0)

    def update_proposal(self, proposal_id: int, **fields: Any) -> None:
        bad = set(fields) - set(PROPOSAL_COLUMNS[5:18])
        if bad:
            raise ValueError(f"unknown proposal fields {sorted(bad)}")
        values = [json.dumps(v) if k in _JSON_COLUMNS else v for k, v in fields.items()]
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE proposals SET {sets}, updated_at=? WHERE id=?",
                             (*values, time.time(), proposal_id))

    def proposals(self, run: str, status: str | None = None, parent_sha: str | None = None,
                  child_sha: str | None = None) -> list[ProposalRow]:
        q, args = f"SELECT {', '.join(PROPOSAL_COLUMNS)} FROM proposals WHERE run=?", [run]
        for col, val in (("status", status), ("parent_sha", parent_sha), ("child_sha", child_sha)):
            if val is not None:
                q += f" AND {col}=?"
                args.append(val)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(PROPOSAL_COLUMNS, r, strict=True))
            for k in _JSON_COLUMNS:
                d[k] = json.loads(d[k])
            out.append(ProposalRow(**d))
        return out

    def add_merge(self, proposal_id: int, run: str, parent_a: str, parent_b: str, base: str,
                  parent_a_score: float | None, parent_b_score: float | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO merges (proposal_id, run, parent_a, parent_b, base, parent_a_score, parent_b_score, "
                "created_at) VALUES (?,?,?,?,?,?,?,?)",
                (proposal_id, run, parent_a, parent_b, base, parent_a_score, parent_b_score, time.time()))

    def update_merge(self, proposal_id: int, *, conflicts: int, resolution: str,
                     contributions: list[dict[str, Any]]) -> None:
        with self._lock:
            self._db.execute("UPDATE merges SET conflicts=?, resolution=?, contributions=? WHERE proposal_id=?",
                             (conflicts, resolution, json.dumps(contributions), proposal_id))

    def merges(self, run: str) -> list[MergeRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT proposal_id, run, parent_a, parent_b, base, conflicts, resolution, contributions, "
                "parent_a_score, parent_b_score FROM merges WHERE run=? ORDER BY proposal_id", (run,)).fetchall()
        return [MergeRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], r[9]) for r in rows]

    def record_llm_call(self, run: str | None, proposal_id: int | None, record: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO llm_calls (run, proposal_id, purpose, model, request_hash, latency_s, attempts, "
                "prompt_tokens, completion_tokens, cost_usd, finish_reason, error, created_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run, proposal_id, record.purpose, record.model, record.request_hash, record.latency_s,
                 record.attempts, record.prompt_tokens, record.completion_tokens, record.cost_usd,
                 record.finish_reason, record.error, time.time()))

    def llm_totals(self, run: str) -> dict[str, float]:
        with self._lock:
            r = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0), "
                "COALESCE(SUM(cost_usd),0) FROM llm_calls WHERE run=?", (run,)).fetchone()
        return {"calls": r[0], "prompt_tokens": r[1], "completion_tokens": r[2], "usd": float(r[3])}


class Store(_RunRecords):
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
            if row is None or int(row[0]) < SCHEMA_VERSION:  # older files gained their new tables above
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
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
