"""Kill -9 / resume cycles on one run: is the evaluator-call budget kept and is nothing left dangling?

A small task whose evaluator appends a line to a log file each time it prepares an instance (so it counts its
own calls, from outside evolver's bookkeeping), evolved by the builtin proposer in the process sandbox on a
300-call budget. `evolver run` is started, killed with SIGKILL at a random moment, resumed with `evolver
resume`, killed again, ... N times, then resumed to the end. Then it prints: kills that hit a live run,
evaluator runs (the log), stored evaluations (run.db), evals_used (run.db), candidate branches without a
proposal, proposals without a lesson line, proposals left pending.

    .venv/bin/python scripts/bench_faults.py [--kills 20] [--budget 300] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVALUATE = '''
import os
from evolver_harness import report

LOG = {log!r}


def prepare(instance):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (instance + "\\n").encode())
    os.close(fd)
    return {{"x": int(instance[1:])}}


def produce(inputs):
    import sol
    return sol.f(inputs["x"])


def judge(instance, inputs, output, usage):
    target = 3.0 * inputs["x"] + 2.0
    if not isinstance(output, (int, float)):
        return report(instance, 0.0, feedback=f"not a number: {{output!r}}")
    return report(instance, 1.0 / (1.0 + abs(output - target)), feedback=f"f({{inputs['x']}}) = {{output}}")
'''
SOL = "A = 1.0\nB = 0.5\n\n\ndef f(x):\n    y = A * x\n    return y + B\n"


def make_task(root: Path, log: Path) -> Path:
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "sol.py").write_text(SOL)
    (root / "evaluate.py").write_text(EVALUATE.format(log=str(log)))
    train = [f"i{k}" for k in range(1, 9)]
    val = [f"i{k}" for k in range(9, 13)]
    (root / "instances.toml").write_text(f"train = {json.dumps(train)}\nval = {json.dumps(val)}\n")
    (root / "task.toml").write_text('[task]\nmutable = ["sol.py"]\n[evaluate]\ntimeout_s = 10\n'
                                    '[sandbox]\nbackend = "process"\nworkers = 2\n')
    return root


def cycle(args: list[str], rng: random.Random, kill: bool) -> bool:
    """Run one evolver command; kill it with SIGKILL after a random delay. True when the kill hit a live run."""
    proc = subprocess.Popen([sys.executable, "-m", "evolver.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if not kill:
        proc.wait(timeout=600)
        return False
    time.sleep(rng.uniform(0.3, 2.5))
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def measure(kills: int, budget: int, seed: int) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="evolver-faults-") as tmp:
        log = Path(tmp) / "calls.log"
        task = make_task(Path(tmp) / "task", log)
        run_dir = Path(tmp) / "run"
        start = ["run", str(task), "--model", "builtin", "--budget-evals", str(budget), "--run", str(run_dir)]
        hits = 0
        for k in range(kills):
            hits += cycle(start if k == 0 else ["resume", str(run_dir)], rng, kill=True)
        cycle(["resume", str(run_dir)], rng, kill=False)
        time.sleep(0.5)  # a harness orphaned by the last kill finishes its batch (it is counted if it does)
        calls = len(log.read_text().splitlines()) if log.exists() else 0
        db = sqlite3.connect(run_dir / "run.db")
        stored = db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        reserved_col = "evals_reserved" if "evals_reserved" in columns else "0"  # older evolvers had no journal
        used, reserved, state, reason = db.execute(
            f"SELECT evals_used, {reserved_col}, state, stop_reason FROM runs").fetchone()
        proposals = db.execute("SELECT id, status, branch, child_sha FROM proposals").fetchall()
        branches = subprocess.run(["git", "--git-dir", str(run_dir / "repo"), "for-each-ref", "--format=%(refname)",
                                   "refs/heads/evolver/"], capture_output=True, text=True, check=True).stdout.split()
        known = {f"refs/heads/{b}" for _, _, b, _ in proposals if b} | {f"refs/heads/evolver/{run_dir.name}/seed"}
        lessons = [json.loads(line) for line in (run_dir / "lessons.jsonl").read_text().splitlines() if line]
        taught = {(x["run"], x["iteration"], x["child"]) for x in lessons}
        rows = db.execute("SELECT iteration, child_sha, status FROM proposals").fetchall()
        untaught = sum((run_dir.name, it, child) not in taught for it, child, status in rows if status != "pending")
        return {"kills": kills, "kills_hitting_a_live_run": hits, "budget": budget, "evaluator_runs": calls,
                "stored_evaluations": stored, "evals_used": used, "evals_reserved_left": reserved,
                "proposals": len(proposals), "pending": sum(p[1] == "pending" for p in proposals),
                "dangling_branches": len(set(branches) - known), "proposals_without_lesson": untaught,
                "lesson_lines": len(lessons), "state": state, "stop_reason": reason}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = measure(args.kills, args.budget, args.seed)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    ok = r["evaluator_runs"] <= r["evals_used"] <= r["budget"] and r["stored_evaluations"] <= r["evals_used"]
    print("| kill -9 cycles (hit a live run) | evaluator runs | stored evaluations | evals_used | budget | "
          "dangling branches | proposals (pending) | proposals without a lesson |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {r['kills']} ({r['kills_hitting_a_live_run']}) | {r['evaluator_runs']} | {r['stored_evaluations']} | "
          f"{r['evals_used']} | {r['budget']} | {r['dangling_branches']} | {r['proposals']} ({r['pending']}) | "
          f"{r['proposals_without_lesson']} |")
    print(f"final state: {r['state']}, {r['stop_reason']}; invariant runs <= evals_used <= budget and stored <= "
          f"evals_used: {'holds' if ok else 'BROKEN'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
