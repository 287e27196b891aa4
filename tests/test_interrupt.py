"""Ctrl-C during `evolver eval`: a clear message, exit 130, saved batches kept, no process left behind."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SLOW_EVALUATE = """from evolver_harness import report
def prepare(instance):
    return {"slow": instance.startswith("slow")}
def produce(inputs):
    import sol
    return sol.f(inputs["slow"])
def judge(instance, inputs, output, usage):
    return report(instance, float(output))
"""
SOL = "import time\n\ndef f(slow):\n    if slow:\n        time.sleep(60)\n    return 1\n"


def _processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cwd"]):
        cwd = p.info.get("cwd") or ""
        if cwd.startswith(str(path)):
            found.append(p)
    return found


def _slow_task(tmp_path: Path, backend: str) -> Path:
    task = tmp_path / "task"
    (task / "seed").mkdir(parents=True)
    (task / "seed" / "sol.py").write_text(SOL)
    (task / "evaluate.py").write_text(SLOW_EVALUATE)
    (task / "instances.toml").write_text('train = ["fast1", "fast2", "slow1", "slow2"]\n')
    (task / "task.toml").write_text('[task]\nmutable = ["sol.py"]\n[evaluate]\ntimeout_s = 120\n'
                                    f'[sandbox]\nworkers = 2\nbackend = "{backend}"\n')
    return task


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    task = _slow_task(tmp_path, "process")
    # A temp dir the candidate's user can reach (pytest's tmp_path is private to root).
    sandbox_tmp = Path(tempfile.mkdtemp(prefix="evolver-test-sbx-", dir="/tmp"))
    sandbox_tmp.chmod(0o755)
    try:
        _interrupt(task, tmp_path / "run", sandbox_tmp)
    finally:
        shutil.rmtree(sandbox_tmp, ignore_errors=True)


def _interrupt(task: Path, run: Path, sandbox_tmp: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "evolver.cli", "eval", str(task), "--run", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(sandbox_tmp)})
    # Wait until the fast batch is saved and the slow one is running.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        db = run / "run.db"
        if db.exists():
            try:
                n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= 2 and _processes_under(sandbox_tmp):
                break
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("the fast batch was never saved")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - started < 15  # did not wait for the 60 s sleep
    assert "interrupted" in err and "Traceback" not in err
    rows = sqlite3.connect(run / "run.db").execute("SELECT instance, status FROM evaluations").fetchall()
    assert sorted(rows) == [("fast1", "ok"), ("fast2", "ok")]
    time.sleep(0.5)
    assert _processes_under(sandbox_tmp) == []
    assert list(sandbox_tmp.iterdir()) == []  # sandbox dirs removed


def test_ctrl_c_removes_the_docker_pool(tmp_path: Path) -> None:
    if os.environ.get("EVOLVER_DOCKER") == "0":
        import pytest

        pytest.skip("EVOLVER_DOCKER=0: docker tests skipped on request")
    import docker

    from evolver.sandbox.docker_host import LABEL_PID, MOUNT_BASE

    client = docker.from_env()
    task, run = _slow_task(tmp_path, "docker"), tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "evolver.cli", "eval", str(task), "--run", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ours = {"label": f"{LABEL_PID}={proc.pid}"}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        db = run / "run.db"
        try:
            n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] if db.exists() else 0
        except sqlite3.OperationalError:
            n = 0
        if n >= 2 and client.containers.list(filters=ours):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("the fast batch was never saved")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    rows = sqlite3.connect(run / "run.db").execute("SELECT instance, status FROM evaluations").fetchall()
    assert sorted(rows) == [("fast1", "ok"), ("fast2", "ok")]
    assert client.containers.list(all=True, filters=ours) == []
    if MOUNT_BASE.exists():
        assert not [m for m in MOUNT_BASE.iterdir() if m.name.split("-")[2] == str(proc.pid)]
