"""Solution quality of the LLM-free proposer on the jobshop task: the validation gap of the best candidate
after 200 and 500 evaluator calls, median of 3 seeds, beside the seed rule (SPT), in one run.

Each seed is one run: evolved to 200 evaluator calls, the best noted, then resumed to 500 (the same
trajectory a single 500-call run would follow). Lower gap is better; the goal is below 18%.

    .venv/bin/python scripts/bench_quality.py [--seeds 3] [--first-seed 0] [--checkpoints 200 500] [--json]

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
JOBSHOP = ROOT / "tasks" / "jobshop"


def one_seed(seed: int, checkpoints: list[int], workdir: Path) -> dict:
    run_dir = workdir / f"seed{seed}"
    gaps, started = {}, time.monotonic()
    result = start_run(JOBSHOP, ModelConfig(model="builtin"), Budget(max_evals=checkpoints[0]), run_dir=run_dir,
                       loop=LoopConfig(seed=seed))
    gaps[checkpoints[0]] = result.best_objectives["gap_pct"]
    for budget in checkpoints[1:]:
        result = resume_run(run_dir, budget=Budget(max_evals=budget))
        gaps[budget] = result.best_objectives["gap_pct"]
    return {"seed": seed, "gaps": gaps, "iterations": result.iterations, "evals": result.evals,
            "seconds": round(time.monotonic() - started, 1), "best": result.best_branch}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[200, 500])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = [one_seed(seed, sorted(args.checkpoints), Path(tmp)) for seed in seeds]
        # The seed rule's gap on the same split, from the first run's stored evaluation of the seed.
        seed_gap = start_gap(Path(tmp) / f"seed{args.first_seed}")
    medians = {c: statistics.median(r["gaps"][c] for r in runs) for c in sorted(args.checkpoints)}
    if args.json:
        print(json.dumps({"seed_rule_gap": seed_gap, "median_gap": medians, "runs": runs}, indent=2))
        return 0
    print(f"jobshop validation gap to best known (%), LLM-free proposer, seeds {', '.join(map(str, seeds))}")
    print(f"{'evaluator calls':>16} {'median gap':>11} {'per seed':>28} {'vs SPT seed':>12}")
    print(f"{0:>16} {seed_gap:>11.2f} {'(SPT)':>28} {1.0:>12.2f}")
    for c, m in medians.items():
        per = ", ".join(f"{r['gaps'][c]:.2f}" for r in runs)
        print(f"{c:>16} {m:>11.2f} {per:>28} {m / seed_gap:>12.2f}")
    for r in runs:
        print(f"seed {r['seed']}: {r['iterations']} iterations, {r['evals']} calls, {r['seconds']} s, best {r['best']}")
    return 0


def start_gap(run_dir: Path) -> float:
    from evolver.views import show

    return statistics.fmean(v["objectives"]["gap_pct"] for v in show(run_dir, "seed")["val"].values())


if __name__ == "__main__":
    sys.exit(main())
