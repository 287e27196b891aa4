"""What a merge costs and what it brings, on a scripted scenario with two complementary improvements.

The jobshop evaluator on a dispatching rule of two terms in two functions (tests/test_merge.py's scenario):
a scripted OpenAI-compatible server on localhost (litellm's real code path) proposes one improvement of each
term, from the seed, in two iterations; the third iteration merges the two siblings. Everything is evaluated
for real in the process sandbox. Printed: the evaluator calls the merge cost (the merged candidate on the
validation subsample, then on the rest of the validation split; the parents' results come from the cache),
its LLM calls, and the validation score and gap of both parents and of the merged candidate.

    .venv/bin/python scripts/bench_merge.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import ScriptedLLMServer  # noqa: E402
from test_merge import URGENCY, WAITING, jobshop_two_terms, seed_picked_at_iteration_2  # noqa: E402

from evolver.engine.budget import Budget  # noqa: E402
from evolver.engine.loop import LoopConfig  # noqa: E402
from evolver.runs import ModelConfig, start_run  # noqa: E402
from evolver.views import show, status  # noqa: E402


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp, ScriptedLLMServer() as server:
        task = jobshop_two_terms(Path(tmp))
        run_dir = Path(tmp) / "run"
        model = ModelConfig(model="openai/bench", api_base=server.api_base)
        server.add(URGENCY, WAITING)
        loop = LoopConfig(minibatch=2, seed=seed_picked_at_iteration_2(7))
        before = start_run(task, model, Budget(max_iterations=2), run_dir=run_dir, loop=loop)
        llm_before = len(server.requests)
        after = start_run(task, model, Budget(max_iterations=3), run_dir=run_dir)
        doc = status(run_dir)
        merge = doc["merges"]["pairs"][0] if doc["merges"]["pairs"] else None
        shown = show(run_dir, merge["merge"]) if merge else None
        rows = {c["candidate"]: c["objectives"] for c in doc["candidates"]}
        return {
            "seed_evals_and_mutations": before.evals,
            "merge_evaluator_calls": after.evals - before.evals,
            "merge_subsample": len(shown["minibatch"]) if shown else 0,
            "merge_llm_calls": len(server.requests) - llm_before,
            "merge": merge,
            "validation": {name: {"score": o["score"], "gap_pct": o.get("gap_pct")} for name, o in rows.items()},
            "validation_instances": len(shown["val"]) if shown else 0,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = measure()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    merge = out["merge"]
    if merge is None:
        print("no merge was attempted")
        return 1
    a, b = merge["parents"]
    print(f"merge {merge['merge']} = {a} + {b} (base {merge['base']}): {merge['resolution']}, {merge['outcome']}")
    print(f"evaluator calls of the merge: {out['merge_evaluator_calls']} ({out['merge_subsample']} on the "
          f"validation subsample, then the rest of the {out['validation_instances']} validation instances); "
          f"LLM calls: {out['merge_llm_calls']}")
    print(f"{'candidate':<12} {'val score':>10} {'val gap %':>10}")
    for name in (merge["base"], a, b, merge["merge"]):
        v = out["validation"].get(name)
        if v:
            label = {merge["base"]: "base", a: "parent", b: "parent", merge["merge"]: "merged"}[name]
            print(f"{name + ' (' + label + ')':<12} {v['score']:>10.4f} {v['gap_pct']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
