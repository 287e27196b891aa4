"""`evolver eval` end to end on the shipped jobshop task: real sandbox, real git, real SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from evolver.repo import RunRepo

ROOT = Path(__file__).resolve().parent.parent
JOBSHOP = ROOT / "tasks" / "jobshop"
MWKR = b'''def priority(duration, work_remaining, ops_remaining, job_work_total, job_ready, time,
             machine_load_remaining, next_duration, next_machine_load, next_machine_ready):
    return -work_remaining
'''


def evolver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evolver.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_eval_seed_json_then_cached_then_ref(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = evolver("eval", str(JOBSHOP), "--split", "train", "--run", str(run), "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["ref"] == "evolver/run/seed" and doc["trusted_scores"] is True
    results = doc["results"]
    assert len(results) == 12 and all(r["status"] == "ok" for r in results)
    assert not any(r["cached"] for r in results)
    gap_spt = doc["summary"]["train"]["mean_objectives_ok"]["gap_pct"]
    assert 25 < gap_spt < 35  # SPT on these instances (README: 29.8)
    ta01 = next(r for r in results if r["instance"] == "ta01")
    assert ta01["objectives"]["gap_pct"] > 0 and ta01["usage"]["cpu_s"] > 0
    assert "1462" in ta01["feedback"]  # the judge's makespan of SPT on ta01
    assert any("priority" in p["function"] for p in ta01["profile"])

    second = json.loads(evolver("eval", str(JOBSHOP), "--split", "train", "--run", str(run), "--json").stdout)
    assert all(r["cached"] for r in second["results"])
    assert [r["score"] for r in second["results"]] == [r["score"] for r in results]

    # A candidate commit of the run repository, evaluated by --ref.
    repo = RunRepo.open_or_init(run / "repo")
    seed = repo.resolve("evolver/run/seed")
    child = repo.commit_changes(seed, {"dispatch.py": MWKR}, "MWKR", kind="manual", run="run")
    repo.set_branch("evolver/run/c1", child)
    third = evolver("eval", str(JOBSHOP), "--split", "train", "--run", str(run), "--ref", "evolver/run/c1",
                    "--json")
    assert third.returncode == 0, third.stderr
    doc3 = json.loads(third.stdout)
    assert doc3["sha"] == child
    assert doc3["summary"]["train"]["mean_objectives_ok"]["gap_pct"] < gap_spt - 3

    unknown = evolver("eval", str(JOBSHOP), "--run", str(run), "--ref", "no-such-branch")
    assert unknown.returncode == 2 and "no-such-branch" in unknown.stderr


def test_eval_table_shows_failures_with_side_information(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert evolver("eval", str(JOBSHOP), "--instances", "ta01", "--run", str(run)).returncode == 0
    repo = RunRepo.open_or_init(run / "repo")
    seed = repo.resolve("evolver/run/seed")
    broken = repo.commit_changes(seed, {"dispatch.py": b"def priority(**kw):\n    return kw['nope'] + 1\n"},
                                 "broken", kind="manual")
    proc = evolver("eval", str(JOBSHOP), "--instances", "ta01,ta02", "--run", str(run), "--ref", broken)
    assert proc.returncode == 0, proc.stderr
    assert "error" in proc.stdout and "KeyError" in proc.stdout and "candidate/dispatch.py" in proc.stdout


def test_eval_other_repository_with_repo_flag(tmp_path: Path) -> None:
    src = tmp_path / "user-repo"
    src.mkdir()
    (src / "dispatch.py").write_bytes(MWKR)
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "."], check=True)
    subprocess.run(["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "mwkr"],
                   check=True)
    proc = evolver("eval", str(JOBSHOP), "--repo", str(src), "--ref", "HEAD", "--instances", "ta01",
                   "--run", str(tmp_path / "run"), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["results"][0]
    assert r["status"] == "ok" and r["objectives"]["gap_pct"] < 25
