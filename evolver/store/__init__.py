"""SQLite state of a run (WAL mode): tasks, candidates, evaluations, runs, proposals, merges, LLM calls.

database.py holds the Store, records.py its run-level records, rows.py the records and their columns, and
schema.py the schema's versions and the migrations between them.
"""

from __future__ import annotations

from .database import Store, check_run_dir
from .rows import (
    MERGE_UPDATABLE,
    PROPOSAL_UPDATABLE,
    RUN_UPDATABLE,
    CandidateRow,
    EvaluationRow,
    LLMCallRow,
    MergeRow,
    ProposalRow,
    RunRow,
    columns,
)
from .schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, migrate, schema_version

PROPOSAL_COLUMNS = columns(ProposalRow)  # the proposals columns a ProposalRow is read from, in order

__all__ = [
    "MERGE_UPDATABLE", "MIGRATIONS", "PROPOSAL_COLUMNS", "PROPOSAL_UPDATABLE", "RUN_UPDATABLE", "SCHEMA_VERSION",
    "CandidateRow", "EvaluationRow", "LLMCallRow", "MergeRow", "ProposalRow", "RunRow", "SchemaError", "Store",
    "check_run_dir",
    "migrate", "schema_version",
]
