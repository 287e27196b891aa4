"""Run-level records of run.db: runs, proposals, merges, LLM calls.

Kept in the same SQLite file as the evaluations so one transaction log holds a run's whole state. A mixin of
Store, which provides the connection (`_db`, rows by column name) and the lock that serialises its use.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

from .rows import (
    MERGE_UPDATABLE,
    PROPOSAL_UPDATABLE,
    RUN_UPDATABLE,
    LLMCallRow,
    MergeRow,
    ProposalRow,
    RunRow,
    check_updatable,
    encode,
    from_row,
    select,
)
from .schema import transaction


class RunRecords:
    _db: sqlite3.Connection
    _lock: threading.Lock

    def _update(self, table: str, key: str, ident: Any, fields: dict[str, Any], stamp: bool = True) -> None:
        """UPDATE one row; the field names were checked against the table's updatable set by the caller."""
        values = encode(table, fields)
        sets = ", ".join(f"{k}=?" for k in values) + (", updated_at=?" if stamp else "")
        args = (*values.values(), *((time.time(),) if stamp else ()), ident)
        with self._lock:
            self._db.execute(f"UPDATE {table} SET {sets} WHERE {key}=?", args)

    # -- runs ------------------------------------------------------------------------------------------
    def create_run(self, name: str, task_path: str, task_digest: str, config: dict[str, Any]) -> RunRow:
        now = time.time()
        values = encode("runs", {"config": config})
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (name, task_path, task_digest, config, state, created_at, updated_at) "
                "VALUES (?,?,?,?, 'running', ?, ?)", (name, task_path, task_digest, values["config"], now, now))
        run = self.run(name)
        assert run is not None
        return run

    def run(self, name: str) -> RunRow | None:
        with self._lock:
            r = self._db.execute(select(RunRow, "runs") + " WHERE name=?", (name,)).fetchone()
        return None if r is None else from_row(RunRow, r)

    def update_run(self, name: str, **fields: Any) -> None:
        check_updatable("run", fields, RUN_UPDATABLE)
        if fields:
            self._update("runs", "name", name, fields)

    def reserve_evals(self, name: str, calls: int) -> None:
        """Promise `calls` evaluator calls to a batch about to start (written before it starts)."""
        with self._lock:
            self._db.execute("UPDATE runs SET evals_reserved = evals_reserved + ? WHERE name=?", (calls, name))

    def settle_evals(self, name: str, reserved: int, evals_used: int) -> None:
        """A batch finished: its promise is released and the calls it made are in `evals_used`, at once."""
        with self._lock:
            self._db.execute("UPDATE runs SET evals_reserved = MAX(0, evals_reserved - ?), evals_used = ?, "
                             "updated_at = ? WHERE name=?", (reserved, evals_used, time.time(), name))

    def recover_reserved(self, name: str) -> int:
        """Calls promised to batches of a process that died count as spent; returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT evals_reserved FROM runs WHERE name=?", (name,)).fetchone()
                lost = int(row[0]) if row is not None else 0
                if lost:
                    self._db.execute("UPDATE runs SET evals_used = evals_used + ?, evals_reserved = 0 "
                                     "WHERE name=?", (lost, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return lost

    # -- proposals -------------------------------------------------------------------------------------
    def add_proposal(self, run: str, iteration: int, kind: str, parent_sha: str, minibatch: list[str],
                     parent_score: float | None, *, parents: Iterable[str] | None = None,
                     proposer: str | None = None, operator: str = "") -> int:
        """A pending proposal. `parents` defaults to the one `parent_sha`; `proposer` to `kind`, which is
        what callers that predate the field pass there."""
        now = time.time()
        values = encode("proposals", {"minibatch": minibatch,
                                      "parents": tuple(parents) if parents is not None else (parent_sha,)})
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO proposals (run, iteration, kind, parent_sha, status, reason, minibatch, parent_score, "
                "parents, proposer, operator, created_at, updated_at) "
                "VALUES (?,?,?,?, 'pending', 'pending', ?,?,?,?,?,?,?)",
                (run, iteration, kind, parent_sha, values["minibatch"], parent_score, values["parents"],
                 kind if proposer is None else proposer, operator, now, now))
            return int(cur.lastrowid or 0)

    def update_proposal(self, proposal_id: int, **fields: Any) -> None:
        check_updatable("proposal", fields, PROPOSAL_UPDATABLE)
        if fields:
            self._update("proposals", "id", proposal_id, fields)

    def proposal(self, proposal_id: int) -> ProposalRow | None:
        with self._lock:
            r = self._db.execute(select(ProposalRow, "proposals") + " WHERE id=?", (proposal_id,)).fetchone()
        return None if r is None else from_row(ProposalRow, r)

    def proposals(self, run: str, status: str | None = None, parent_sha: str | None = None,
                  child_sha: str | None = None) -> list[ProposalRow]:
        q, args = select(ProposalRow, "proposals") + " WHERE run=?", [run]
        for col, val in (("status", status), ("parent_sha", parent_sha), ("child_sha", child_sha)):
            if val is not None:
                q += f" AND {col}=?"
                args.append(val)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [from_row(ProposalRow, r) for r in rows]

    # -- merges ----------------------------------------------------------------------------------------
    def add_merge(self, proposal_id: int, run: str, parent_a: str, parent_b: str, base: str,
                  parent_a_score: float | None, parent_b_score: float | None) -> None:
        """The merge's row; its proposal's parents become the pair, whatever the proposal was given."""
        pair = encode("proposals", {"parents": (parent_a, parent_b)})["parents"]
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO merges (proposal_id, run, parent_a, parent_b, base, parent_a_score, "
                "parent_b_score, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (proposal_id, run, parent_a, parent_b, base, parent_a_score, parent_b_score, time.time()))
            self._db.execute("UPDATE proposals SET parents=? WHERE id=?", (pair, proposal_id))

    def update_merge(self, proposal_id: int, *, conflicts: int, resolution: str,
                     contributions: list[dict[str, Any]]) -> None:
        fields = {"conflicts": conflicts, "resolution": resolution, "contributions": contributions}
        check_updatable("merge", fields, MERGE_UPDATABLE)
        self._update("merges", "proposal_id", proposal_id, fields, stamp=False)

    def merge(self, proposal_id: int) -> MergeRow | None:
        with self._lock:
            r = self._db.execute(select(MergeRow, "merges") + " WHERE proposal_id=?", (proposal_id,)).fetchone()
        return None if r is None else from_row(MergeRow, r)

    def merges(self, run: str) -> list[MergeRow]:
        with self._lock:
            rows = self._db.execute(select(MergeRow, "merges") + " WHERE run=? ORDER BY proposal_id",
                                    (run,)).fetchall()
        return [from_row(MergeRow, r) for r in rows]

    # -- LLM calls -------------------------------------------------------------------------------------
    def record_llm_call(self, run: str | None, proposal_id: int | None, record: Any) -> None:
        """`record` is an evolver.llm.LLMCallRecord (read by attribute: the store does not import the LLM)."""
        errors = encode("llm_calls", {"attempt_errors": tuple(getattr(record, "attempt_errors", ()))})
        with self._lock:
            self._db.execute(
                "INSERT INTO llm_calls (run, proposal_id, purpose, model, request_hash, latency_s, attempts, "
                "prompt_tokens, completion_tokens, cost_usd, finish_reason, error, error_kind, attempt_errors, "
                "cached, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run, proposal_id, record.purpose, record.model, record.request_hash, record.latency_s,
                 record.attempts, record.prompt_tokens, record.completion_tokens, record.cost_usd,
                 record.finish_reason, record.error, getattr(record, "error_kind", None),
                 errors["attempt_errors"], int(getattr(record, "cached", False)), time.time()))

    def llm_calls(self, run: str, proposal_id: int | None = None) -> list[LLMCallRow]:
        q, args = select(LLMCallRow, "llm_calls") + " WHERE run=?", [run]
        if proposal_id is not None:
            q += " AND proposal_id=?"
            args.append(proposal_id)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [from_row(LLMCallRow, r) for r in rows]

    def llm_totals(self, run: str) -> dict[str, float]:
        """Calls (what evolver asked for) and requests (HTTP attempts, retries included: what a server saw)."""
        with self._lock:
            r = self._db.execute(
                "SELECT COUNT(*) AS calls, COALESCE(SUM(attempts), 0) AS requests, "
                "COALESCE(SUM(error IS NOT NULL), 0) AS failed, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
                "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, COALESCE(SUM(cost_usd), 0) AS usd "
                "FROM llm_calls WHERE run=?", (run,)).fetchone()
        return {"calls": r["calls"], "requests": r["requests"], "failed": r["failed"],
                "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
                "usd": float(r["usd"])}
