"""OS errors a user can cause: a read-only run directory, a repository made read-only mid-run, a full disk.

Each ends in exit 1 with one line naming the path and the OS's (or SQLite's) words, the run marked interrupted
when its store can still be written, nothing already stored lost, and `evolver resume` continuing once fixed.
Readers (`status`, `show`, `export --patch`) work on a read-only run directory and write nothing.

The faults are real: tmpfs mounts (a tiny one fills up) and bind mounts remounted read-only, which stop root
too (file modes do not). They need root and mount(8); without them the tests are skipped, saying so.
"""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from conftest import write_task

from evolver import api, cli
from evolver.engine.budget import Budget
from evolver.store import EvaluationRow, Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a read-only bind mount needs root")

BIG_FEEDBACK = '''
import random
from evolver_harness import report

def prepare(instance):
    return {"x": int(instance[1:])}

def produce(inputs):
    import sol
    return sol.f(inputs["x"])

def judge(instance, inputs, output, usage):
    noise = random.Random().randbytes(150_000).hex()  # 300 kB of feedback per instance
    return report(instance, 1.0 if output == inputs["x"] * 2 else 0.0, feedback=noise)
'''


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"this machine cannot stage the fault: mount {' '.join(args)}: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    gc.collect()  # a dropped repository's git cat-file processes may still hold the mount
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` made read-only in place (a bind mount of itself, remounted ro) until the block ends."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def _said(lines: list[str]) -> list[str]:
    """evolver's own last words on stderr (the rest is the progress of iterations)."""
    assert not any("Traceback" in line for line in lines), lines
    return [line for line in lines if line.startswith("evolver:")]


def _db(run_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True)


def _stored(run_dir: Path) -> set[tuple[str, str, str]]:
    db = _db(run_dir)
    try:
        return set(db.execute("SELECT task_digest, tree, instance FROM evaluations").fetchall())
    finally:
        db.close()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.endswith(("-shm", "-wal"))}  # SQLite's coordination files, not the run's data


def _task(tmp_path: Path, evaluate_py: str | None = None) -> Path:
    task = write_task(tmp_path / "task", train=("i1", "i2", "i3"),
                      **({"evaluate_py": evaluate_py} if evaluate_py else {}))
    (task / "instances.toml").write_text('train = ["i1", "i2", "i3"]\nval = ["i4", "i5"]\n')
    return task


def test_a_read_only_run_directory_at_start_is_one_line_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    task = _task(tmp_path)
    with tmpfs(tmp_path / "ro", "1m") as ro:
        (ro / "existing").mkdir()
        _mount("-o", "remount,ro", str(ro))
        for run_dir in (ro / "new", ro / "existing"):
            for verb in (["run", str(task), "--model", "builtin", "--max-iterations", "1"], ["eval", str(task)]):
                code, lines = _cli(capsys, *verb, "--run", str(run_dir))
                assert code == 1 and len(lines) == 1, lines
                # The first write refused: the run's folder, or its lock file (`run` takes the lock first).
                assert lines[0] in (f"evolver: {run_dir}: [Errno 30] Read-only file system",
                                    f"evolver: {run_dir}/lock: [Errno 30] Read-only file system"), lines
        assert sorted(os.listdir(ro)) == ["existing"] and os.listdir(ro / "existing") == []


def test_a_repository_made_read_only_mid_run_stops_cleanly_and_resumes(tmp_path: Path, capsys) -> None:
    task = _task(tmp_path)
    run_dir = tmp_path / "run"
    repo = run_dir / "repo"
    made_read_only: list[bool] = []
    with ExitStack() as stack:
        def on_event(event) -> None:  # after the first iteration, the repository becomes read-only
            if event.kind == "iteration" and not made_read_only:
                stack.enter_context(read_only(repo))
                made_read_only.append(True)

        with pytest.raises(OSError) as err:
            api.run(task, model="builtin", budget=Budget(max_iterations=6), run_dir=run_dir, on_event=on_event)
        assert err.value.errno == errno.EROFS and err.value.filename == str(repo / "objects")
        state, reason, iterations = _db(run_dir).execute("SELECT state, stop_reason, iteration FROM runs").fetchone()
        assert state == "interrupted" and "Read-only file system" in reason and iterations == 2
        stored = _stored(run_dir)
        assert stored  # the seed's and the first iteration's evaluations

        # Resumed while it is still read-only: the same one line, the hint to resume, nothing lost.
        code, lines = _cli(capsys, "resume", str(run_dir))
        assert code == 1 and _said(lines) == [
            f"evolver: {repo / 'objects'}: [Errno 30] Read-only file system; what finished is saved: once fixed, "
            f"continue with `evolver resume {run_dir}`"], lines
        assert _cli(capsys, "status", str(run_dir), "--json")[0] == 0  # a reader needs no write
    assert cli.main(["resume", str(run_dir), "--json"]) == 0
    state, iterations = _db(run_dir).execute("SELECT state, iteration FROM runs").fetchone()
    assert state == "stopped" and iterations == 6
    assert stored <= _stored(run_dir)
    reasons = [r for (r,) in _db(run_dir).execute("SELECT reason FROM proposals ORDER BY id")]
    assert "interrupted" in reasons and len(reasons) >= 5, reasons  # the proposals cut short, then the rest


def test_a_full_disk_mid_run_says_so_and_resume_continues_once_there_is_room(tmp_path: Path, capsys) -> None:
    task = _task(tmp_path, BIG_FEEDBACK)
    with tmpfs(tmp_path / "small", "3m") as small:
        run_dir = small / "run"
        code, lines = _cli(capsys, "run", str(task), "--model", "builtin", "--max-iterations", "40",
                           "--run", str(run_dir))
        said = _said(lines)
        assert code == 1 and len(said) == 1, lines
        assert "cannot rollback" not in said[0]
        assert (f"{run_dir / 'run.db'}: database or disk is full" in said[0]
                or "[Errno 28] No space left on device" in said[0]), said
        stored = _stored(run_dir)
        assert stored
        assert _db(run_dir).execute("SELECT state FROM runs").fetchone()[0] in ("interrupted", "running")
        _mount("-o", "remount,size=256m", str(small))
        code, lines = _cli(capsys, "resume", str(run_dir), "--max-iterations", "4")
        assert code == 0, lines
        assert stored <= _stored(run_dir)
        assert _db(run_dir).execute("SELECT state FROM runs").fetchone()[0] == "stopped"


def test_a_full_disk_is_reported_as_such_not_as_a_failed_rollback(tmp_path: Path) -> None:
    row = EvaluationRow(instance="i", repeat=0, split="train", status="ok", score=1.0, objectives={},
                        feedback="x" * 100_000, profile=[], usage=None, stdout="", stderr="", backend="b",
                        trusted=True)
    with tmpfs(tmp_path / "small", "512k") as small:
        store = Store(small / "run.db")
        saved = 0
        with pytest.raises(sqlite3.OperationalError, match=r"^database or disk is full$"):
            for k in range(100):
                store.save_evaluations("key", f"tree{k}", [row])
                saved += 1
        assert saved and store.evaluation_count() == saved  # every batch saved before is still there
        store.close()


def test_readers_work_on_a_read_only_run_directory_and_write_nothing(tmp_path: Path, capsys) -> None:
    task = _task(tmp_path)
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(task), "--model", "builtin", "--max-iterations", "3", "--run", str(run_dir),
                     "--json"]) == 0
    capsys.readouterr()
    before = _files(run_dir)
    for verb in (["status", str(run_dir)], ["show", str(run_dir), "best"], ["status", str(run_dir), "--json"]):
        assert _cli(capsys, *verb)[0] == 0
    assert _files(run_dir) == before  # no reader writes, even where it could
    with read_only(run_dir):
        for verb in (["status", str(run_dir), "--json"], ["show", str(run_dir), "seed", "--json"],
                     ["export", str(run_dir), "--patch", str(tmp_path / "best.patch")]):
            code, lines = _cli(capsys, *verb)
            assert code == 0, lines
        code, lines = _cli(capsys, "export", str(run_dir), "--branch", "mine")  # a write: refused in one line
        assert code == 1 and len(lines) == 1 and "Read-only file system" in lines[0], lines
    assert _files(run_dir) == before and (tmp_path / "best.patch").is_file()
