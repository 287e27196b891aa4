"""Solution quality of the LLM-free proposer on jobshop and spot: the best candidate's validation result after
150 and 500 evaluator calls, median of 3 seeds, beside the seed program, with the iterations each budget bought
and why each run stopped, in one run.

Each seed is one run: evolved to the first checkpoint, the best noted, then resumed to the next (the same
trajectory a single run with the larger budget would follow). jobshop reports the mean gap to the best known
makespan (%, lower is better; the seed rule SPT is at 28.75); spot the mean score (higher is better; the seed
policy, greedy, is at 48.38). A run may end before its budget: spot's builtin proposer runs out of new mutants.

    .venv/bin/python scripts/bench_quality.py [--tasks jobshop spot] [--seeds 3] [--first-seed 0]
        [--checkpoints 150 500] [--json]

`--first-seed K` runs seeds K .. K+seeds-1: another set of seeds, to check a result is not one lucky set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.runs import ModelConfig, resume_run, start_run

ROOT = Path(__file__).resolve().parent.parent
# task -> the objective shown (jobshop's gap: lower is better; spot's score: higher is better)
MEASURES = {"jobshop": "gap_pct", "spot": "score"}


def one_seed(task: str, seed: int, checkpoints: list[int], workdir: Path) -> dict:
    name = MEASURES[task]
    run_dir = workdir / f"{task}-seed{seed}"
    values, iterations, stops, started = {}, {}, {}, time.monotonic()
    result = start_run(ROOT / "tasks" / task, ModelConfig(model="builtin"), Budget(max_evals=checkpoints[0]),
                       run_dir=run_dir, loop=LoopConfig(seed=seed))
    for k, budget in enumerate(checkpoints):
        if k:
            result = resume_run(run_dir, budget=Budget(max_evals=budget))
        values[budget] = result.best_objectives[name]
        iterations[budget], stops[budget] = result.iterations, f"{result.stop_kind}: {result.stop_reason}"
    return {"seed": seed, "values": values, "iterations": iterations, "stops": stops, "evals": result.evals,
            "seconds": round(time.monotonic() - started, 1), "best": result.best_branch}


def seed_value(task: str, run_dir: Path) -> float:
    from evolver.views import show

    name = MEASURES[task]
    return statistics.fmean(v["objectives"][name] if name != "score" else v["score"]
                            for v in show(run_dir, "seed")["val"].values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", choices=sorted(MEASURES), default=sorted(MEASURES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[150, 500])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    checkpoints = sorted(args.checkpoints)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            runs = [one_seed(task, seed, checkpoints, Path(tmp)) for seed in seeds]
            report[task] = {"seed_program": seed_value(task, Path(tmp) / f"{task}-seed{args.first_seed}"),
                            "median": {c: statistics.median(r["values"][c] for r in runs) for c in checkpoints},
                            "runs": runs}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"LLM-free proposer, seeds {', '.join(map(str, seeds))}: best candidate's validation mean")
    print(f"{'task':>8} {'measure':>8} {'calls':>6} {'median':>8} {'per seed':>24} {'iterations':>14} {'vs seed':>8}")
    for task, r in report.items():
        name = MEASURES[task]
        base = r["seed_program"]
        print(f"{task:>8} {name:>8} {0:>6} {base:>8.2f} {'(seed program)':>24} {'':>14} {1.0:>8.2f}")
        for c in checkpoints:
            per = ", ".join(f"{x['values'][c]:.2f}" for x in r["runs"])
            its = ", ".join(str(x["iterations"][c]) for x in r["runs"])
            print(f"{task:>8} {name:>8} {c:>6} {r['median'][c]:>8.2f} {per:>24} {its:>14} "
                  f"{r['median'][c] / base:>8.2f}")
        for x in r["runs"]:
            print(f"  {task} seed {x['seed']}: {x['evals']} calls, {x['seconds']} s, best {x['best']}; stopped "
                  + "; ".join(f"at {c}: {x['stops'][c]}" for c in checkpoints))
    return 0


if __name__ == "__main__":
    sys.exit(main())
