"""The records of run.db and how each maps to its table, column by name.

A record's fields are named after its table's columns, so reading is `SELECT <the fields>` and building the
record from `sqlite3.Row` by name: adding a column can never shift what another field reads. Columns that hold
JSON are listed per table and converted in one place, on the way in and on the way out.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar


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
    # The failing traceback's frames in candidate files, outermost first: {"file", "line", "function"}.
    frames: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CandidateRow:
    id: int
    run: str
    sha: str
    tree: str
    branch: str | None
    parents: tuple[str, ...]
    kind: str


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
    stop_reason: str | None  # for people: which limit, what failed
    stop_kind: str | None = None  # config.STOP_KINDS; None while running, or for a run stopped before schema 5
    evals_reserved: int = 0  # promised to batches in flight (spent, should the process die)


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
    parents: tuple[str, ...] = ()  # a mutation's one parent; a merge's pair, its first parent first
    proposer: str = ""  # the registered proposer that made it ("builtin", "reflective", "merge", ...)
    operator: str = ""  # that proposer's own label for the kind of change ("perturb", ...); "" when it has none


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


@dataclass(frozen=True)
class LLMCallRow:
    """One LLM call (all its HTTP attempts): no key, no header, no prompt text."""

    id: int
    run: str | None
    proposal_id: int | None  # the proposal it was made for (None: outside one, or by an older evolver)
    purpose: str  # propose | repair | merge | merge_repair
    model: str
    request_hash: str
    latency_s: float  # the whole call, retries and waits included
    attempts: int  # HTTP requests sent (0: a cache hit, or failed before sending)
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    finish_reason: str | None
    error: str | None  # why the call failed, for people; None when it succeeded
    error_kind: str | None  # config.LLM_ERROR_KINDS
    attempt_errors: list[str]  # the error of every failed attempt, in order (a call may succeed after some)
    cached: bool
    created_at: float


# Fields a caller may change after the row is written; everything else is fixed when it is added.
RUN_UPDATABLE = frozenset({"state", "iteration", "evals_used", "usd_used", "elapsed_s", "stop_reason", "stop_kind",
                           "config"})
PROPOSAL_UPDATABLE = frozenset({
    "child_sha", "branch", "status", "reason", "detail", "diagnosis", "change", "minibatch", "parent_score",
    "child_score", "val_score", "files", "failure_kinds", "parents", "proposer", "operator"})
MERGE_UPDATABLE = frozenset({"conflicts", "resolution", "contributions"})

# Columns stored as JSON text, per table.
JSON_COLUMNS: Mapping[str, frozenset[str]] = {
    "evaluations": frozenset({"objectives", "profile", "usage", "frames"}),
    "candidates": frozenset({"parents"}),
    "runs": frozenset({"config"}),
    "proposals": frozenset({"minibatch", "files", "failure_kinds", "parents"}),
    "merges": frozenset({"contributions"}),
    "llm_calls": frozenset({"attempt_errors"}),
}


def _json_tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text else None


# How a column's stored value becomes the field's value, where the two differ.
_READERS: Mapping[type, Mapping[str, Callable[[Any], Any]]] = {
    EvaluationRow: {"objectives": json.loads, "profile": json.loads, "usage": _json_or_none,
                    "frames": json.loads, "trusted": bool},
    CandidateRow: {"parents": _json_tuple},
    RunRow: {"config": json.loads},
    ProposalRow: {"minibatch": json.loads, "files": json.loads, "failure_kinds": json.loads,
                  "parents": _json_tuple},
    MergeRow: {"contributions": json.loads},
    LLMCallRow: {"attempt_errors": json.loads, "cached": bool},
}

R = TypeVar("R")


def columns(record: type) -> tuple[str, ...]:
    """The columns a record is read from: its field names, in order."""
    return tuple(f.name for f in fields(record))


def select(record: type, table: str) -> str:
    """`SELECT <the record's columns> FROM table`, to be followed by a WHERE clause."""
    return f"SELECT {', '.join(columns(record))} FROM {table}"


def from_row(record: type[R], row: sqlite3.Row) -> R:
    readers = _READERS.get(record, {})
    values = {}
    for name in columns(record):
        value = row[name]
        values[name] = readers[name](value) if name in readers else value
    return record(**values)


def encode(table: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Values ready to bind: JSON columns as text (tuples as lists), the others as they are."""
    json_cols = JSON_COLUMNS.get(table, frozenset())
    out = {}
    for name, value in values.items():
        if name in json_cols and value is not None:
            value = json.dumps(list(value) if isinstance(value, tuple) else value)
        out[name] = value
    return out


def check_updatable(kind: str, given: Mapping[str, Any], allowed: frozenset[str]) -> None:
    bad = set(given) - allowed
    if bad:
        raise ValueError(f"unknown {kind} fields {sorted(bad)}; updatable: {sorted(allowed)}")
