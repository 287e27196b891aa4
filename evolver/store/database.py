"""The Store: one SQLite file (WAL mode) holding a run's tasks, candidates, evaluations and run records.

An evaluation row is keyed by (task digest, tree sha, instance, repeat): the same files under the same
evaluator are never run twice unless asked (`--no-cache`). Rows are written one batch at a time in a
transaction, so a killed process loses at most the batch in flight. Opening a file brings its schema up to
date first (schema.py).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .records import RunRecords
from .rows import CandidateRow, EvaluationRow, columns, encode, from_row, select
from .schema import SCHEMA_VERSION, migrate, schema_version, transaction

# The evaluation columns a row writes, after the key (task_digest, tree); created_at is the time of saving.
_EVALUATION_COLUMNS = tuple(c for c in columns(EvaluationRow) if c != "created_at")


WAL_WAIT_S = 30.0


def _set_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL mode. Switching needs a moment of exclusive access, and SQLite answers "database is locked"
    at once (without its busy handler) when another process opens the same new file at that moment: retry."""
    deadline = time.monotonic() + WAL_WAIT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def check_run_dir(folder: Path) -> None:
    """A run directory must be a folder (or not exist yet): `--run` naming a file is bad input."""
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{folder}: expected a run directory (a folder, or a path that does not exist yet), "
                             "found a file")


def _why_unwritable(folder: Path) -> None:
    """SQLite says only "unable to open database file" where it cannot write: ask the OS why, and raise that
    (an OSError naming the folder and its errno), if the folder is the reason."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None


def _reader(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: read-only, or immutable where SQLite cannot create its shared-memory file
    beside the database (a read-only folder or mount: a writer would have that file, so none is at work)."""
    if not path.is_file():
        raise UserInputError(f"{path}: expected a run's run.db, found none")
    try:
        return _connect_reading(path, "mode=ro")
    except sqlite3.OperationalError:
        return _connect_reading(path, "immutable=1")


def _connect_reading(path: Path, mode: str) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, check_same_thread=False,
                         isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA query_only=ON")  # no statement through this connection writes, whatever it is
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opening is lazy: fail here, not later
    except BaseException:
        db.close()
        raise
    return db


class Store(RunRecords):
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        """Open (creating and migrating as needed) the store at `path`; `readonly`: for views, which must never
        write, so that they work on a read-only run directory too (a file of an older schema is still migrated,
        as no query of this evolver could read it)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self.upgraded: tuple[int, ...] = ()  # the schema versions this open applied
        if readonly and self._open_reader():
            return
        check_run_dir(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.OperationalError:
            _why_unwritable(self.path.parent)
            raise
        self._db.row_factory = sqlite3.Row  # every read goes by column name
        try:
            _set_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._lock:
                self.upgraded = migrate(self._db, self.path)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.OperationalError):
                _why_unwritable(self.path.parent)
            raise

    def _open_reader(self) -> bool:
        """Open the file read-only; False (and closed) when it has an older schema and must be migrated first."""
        db = _reader(self.path)
        try:
            current = schema_version(db, self.path) >= SCHEMA_VERSION
            if current:
                migrate(db, self.path)  # writes nothing here: refuses a newer file, or finds nothing to do
        except BaseException:
            db.close()
            raise
        if not current:
            db.close()
            return False
        db.row_factory = sqlite3.Row
        self._db = db
        return True

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
                "VALUES (?,?,?,?,?,?,?)",
                (run, sha, tree, branch, encode("candidates", {"parents": tuple(parents)})["parents"], kind,
                 time.time()))
            if branch is not None:
                self._db.execute("UPDATE candidates SET branch=? WHERE sha=?", (branch, sha))
        found = self.candidate(sha)
        assert found is not None
        return found

    def candidate(self, sha: str) -> CandidateRow | None:
        with self._lock:
            r = self._db.execute(select(CandidateRow, "candidates") + " WHERE sha=?", (sha,)).fetchone()
        return None if r is None else from_row(CandidateRow, r)

    def candidates(self, run: str | None = None) -> list[CandidateRow]:
        q, args = select(CandidateRow, "candidates"), ()
        if run is not None:
            q, args = q + " WHERE run=?", (run,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [from_row(CandidateRow, r) for r in rows]

    # -- evaluations ---------------------------------------------------------------------------------
    def cached(self, task_digest: str, tree: str, instances: Iterable[str]) -> dict[tuple[str, int], EvaluationRow]:
        wanted = set(instances)
        with self._lock:
            rows = self._db.execute(select(EvaluationRow, "evaluations") + " WHERE task_digest=? AND tree=?",
                                    (task_digest, tree)).fetchall()
        found = (from_row(EvaluationRow, r) for r in rows if r["instance"] in wanted)
        return {(e.instance, e.repeat): e for e in found}

    def save_evaluations(self, task_digest: str, tree: str, rows: Iterable[EvaluationRow]) -> None:
        now = time.time()
        values = []
        for r in rows:
            fields = encode("evaluations", {c: getattr(r, c) for c in _EVALUATION_COLUMNS})
            fields["trusted"] = int(r.trusted)
            values.append((task_digest, tree, *fields.values(), now))
        names = ("task_digest", "tree", *_EVALUATION_COLUMNS, "created_at")
        sql = (f"INSERT OR REPLACE INTO evaluations ({', '.join(names)}) "
               f"VALUES ({', '.join('?' for _ in names)})")
        with self._lock, transaction(self._db):
            self._db.executemany(sql, values)

    def keys_of(self, tree: str) -> list[str]:
        """The evaluator keys a tree has stored results under, the most results first (then the newest)."""
        with self._lock:
            rows = self._db.execute("SELECT task_digest, COUNT(*) AS n, MAX(created_at) AS t FROM evaluations "
                                    "WHERE tree=? GROUP BY task_digest ORDER BY n DESC, t DESC", (tree,)).fetchall()
        return [r["task_digest"] for r in rows]

    def evaluation_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])
