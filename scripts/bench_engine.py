"""Engine overhead per iteration and evaluator calls against GEPA's loop, measured in one run.

A trivial task (the candidate returns a number, the judge scores it) and a scripted OpenAI-compatible server
on localhost (litellm's real code path). Overhead per iteration = iteration wall time minus the time inside
LLM calls and inside evaluations that ran the sandbox: frontier, selection, store and git work, prompt
building, patching. Measured with none, 10 and 1,000 accepted candidates already stored (high-scoring ones),
one iteration in flight. Then, for each trajectory, the evaluator calls our loop spent beside what GEPA's loop
would spend on it (GEPA evaluates the parent's minibatch afresh every iteration and validates every child that
passes its minibatch on the whole validation split), and whether the frontier is as good: the best validation
mean and the sum over validation instances of the best score there, ours against GEPA's pool (every child that
passed its minibatch, the ones our staged validation stopped evaluated in full afterwards, outside the count).

The trajectory cycles through three kinds of proposal, as seen with real models: a change that is better
everywhere; one that overfits (better on the train instances, worse on the validation ones); one that is
worse everywhere.

    .venv/bin/python scripts/bench_engine.py [--iterations 50] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import ScriptedLLMServer  # noqa: E402

from evolver.engine.budget import Budget  # noqa: E402
from evolver.engine.loop import LoopConfig  # noqa: E402
from evolver.evaluation import cache_key  # noqa: E402
from evolver.lessons import Lesson, LessonLog  # noqa: E402
from evolver.repo import RunRepo, candidate_branch, seed_branch  # noqa: E402
from evolver.runs import ModelConfig, _drive  # noqa: E402
from evolver.store import EvaluationRow, Store  # noqa: E402
from evolver.task import load_task  # noqa: E402

EVALUATE = """from evolver_harness import report
def prepare(instance):
    return {"i": int(instance[1:])}
def produce(inputs):
    import sol
    return sol.f(inputs["i"])
def judge(instance, inputs, output, usage):
    return report(instance, float(output) if isinstance(output, (int, float)) else 0.0)
"""
TRAIN = [f"t{i}" for i in range(20)]
VAL = [f"v{i}" for i in range(100, 130)]


def make_task(root: Path) -> Path:
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "sol.py").write_text("WEIGHT = 0.1\n\n\ndef f(i):\n    return WEIGHT * (1 + i % 3) / 3\n")
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "instances.toml").write_text(f"train = {json.dumps(TRAIN)}\nval = {json.dumps(VAL)}\n")
    (root / "task.toml").write_text('[task]\nmutable = ["sol.py"]\n[evaluate]\ntimeout_s = 10\n')
    return root


def reply(k: int) -> str:
    """Proposal k: better everywhere (k % 3 == 0), overfit (1) or worse everywhere (2)."""
    weight = 0.1 + 0.01 * k
    if k % 3 == 1:  # train ids are 0..19, validation ids 100..129
        body = f"WEIGHT = {weight}\n\n\ndef f(i):\n    return WEIGHT * (3.0 if i < 100 else 0.2) * (1 + i % 3) / 3\n"
    else:
        body = f"WEIGHT = {weight if k % 3 == 0 else 0.05}\n\n\ndef f(i):\n    return WEIGHT * (1 + i % 3) / 3\n"
    return f"## Diagnosis\nweight off\n## Change\nproposal {k}\n\n```python sol.py\n{body}```\n"


def prefill(run_dir: Path, task_root: Path, n: int) -> None:
    """n accepted candidates with stored validation results and lessons, as a long run would have."""
    task = load_task(task_root)
    name = run_dir.resolve().name
    store = Store(run_dir / "run.db")
    repo = RunRepo.open_or_init(run_dir / "repo")
    seed = repo.commit_folder(task.seed_dir, "seed", run=name)
    repo.set_branch(seed_branch(name), seed)
    store.record_candidate(name, seed, repo.tree_sha(seed), seed_branch(name), (), "seed")
    key = cache_key(task)
    log = LessonLog(run_dir / "lessons.jsonl")
    for k in range(n):
        child = repo.commit_changes(seed, {"sol.py": f"WEIGHT = {0.001 * k}\n"}, f"w{k}", "mutation", run=name)
        pid = store.add_proposal(name, 0, "mutation", seed, TRAIN[:3], 0.0)
        repo.set_branch(candidate_branch(name, pid), child)
        tree = repo.tree_sha(child)
        store.record_candidate(name, child, tree, candidate_branch(name, pid), (seed,), "mutation")
        store.update_proposal(pid, child_sha=child, status="accepted", reason="accepted", files=["sol.py"])
        store.save_evaluations(key, tree, [EvaluationRow(v, 0, "val", "ok", x, {}, "", [], None, "", "", "process",
                                                         True) for v, x in zip(VAL, prefilled_val(k), strict=True)])
        log.append(Lesson(task.name, name, 0, seed, child, ("sol.py",), (), "d", "c", "accepted", "accepted", 0.1))
    store.close()


def prefilled_val(k: int) -> list[float]:
    return [(k % 7) / 7 + (j == k % 10) * 0.5 for j in range(len(VAL))]


def measure(n_stored: int, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, ScriptedLLMServer() as server:
        task_root = make_task(Path(tmp) / "task")
        run_dir = Path(tmp) / f"bench{n_stored}"
        run_dir.mkdir()
        if n_stored:
            prefill(run_dir, task_root, n_stored)
        server.add(*[reply(k) for k in range(iterations + 5)])
        store = Store(run_dir / "run.db")
        name = run_dir.resolve().name
        store.create_run(name, str(task_root), load_task(task_root).digest, {
            "model": ModelConfig(model="openai/bench", api_base=server.api_base).to_json(),
            "budget": Budget(max_iterations=iterations).to_json(), "loop": LoopConfig(seed=1, merge=False).to_json(),
            "lessons": str(run_dir / "lessons.jsonl")})
        excluded: list[float] = []
        marks: list[float] = []

        from evolver.evaluation import Evaluator
        from evolver.llm import LLM

        def excluding(cls, method, counts):
            """Time inside `method` is not engine overhead (an evaluation counts only if it ran a sandbox)."""
            original = getattr(cls, method)

            def wrapper(self, *a, **kw):
                t0 = time.perf_counter()
                out = original(self, *a, **kw)
                if counts(out):
                    excluded.append(time.perf_counter() - t0)
                return out
            setattr(cls, method, wrapper)
            return original

        orig_llm = excluding(LLM, "complete", lambda out: True)
        orig_eval = excluding(Evaluator, "evaluate", lambda out: any(not r.cached for r in out))
        try:
            def on_event(event) -> None:
                if event.kind == "iteration":
                    marks.append((time.perf_counter(), sum(excluded)))

            t_start = time.perf_counter()
            marks.append((t_start, 0.0))
            result = _drive(run_dir, store, on_event, None, 1)
        finally:
            LLM.complete, Evaluator.evaluate = orig_llm, orig_eval
        # The first mark is after the start (seed and stored candidates loaded): per-iteration spans follow it.
        spans = [(b[0] - a[0]) - (b[1] - a[1]) for a, b in itertools.pairwise(marks[1:])]
        db = store._db
        rows = db.execute("SELECT status, reason, child_sha, minibatch FROM proposals WHERE iteration > 0 "
                          "ORDER BY id").fetchall()
        store.close()
        seed_files = (task_root / "seed" / "sol.py").read_text()
        repo = RunRepo.open_or_init(run_dir / "repo")
        passed = [(status, sha) for status, reason, sha, _ in rows
                  if status == "accepted" or reason in ("raced", "gate")]
        val_of = {sha: val_scores(repo.read_files(sha)["sol.py"].decode()) for _, sha in passed}
    gepa = len(VAL)  # the seed on the validation split, as both loops start
    for _, _, sha, minibatch in rows:
        size = len(json.loads(minibatch))
        gepa += size + (size if sha else 0) + (len(VAL) if sha in val_of else 0)
    seed_val = val_scores(seed_files)
    stored = [prefilled_val(k) for k in range(n_stored)]
    ours = [seed_val, *stored, *(val_of[sha] for status, sha in passed if status == "accepted")]
    theirs = [seed_val, *stored, *val_of.values()]
    return {"stored": n_stored, "iterations": len(spans), "overhead_p50_ms": round(statistics.median(spans) * 1000, 1),
            "overhead_p95_ms": round(sorted(spans)[int(0.95 * (len(spans) - 1))] * 1000, 1),
            "evals_ours": result.evals, "evals_gepa": gepa,
            "raced": sum(reason == "raced" for _, reason, _, _ in rows),
            "best_mean_ours": round(max(statistics.fmean(v) for v in ours), 4),
            "best_mean_gepa": round(max(statistics.fmean(v) for v in theirs), 4),
            "envelope_ours": round(sum(max(col) for col in zip(*ours, strict=True)), 4),
            "envelope_gepa": round(sum(max(col) for col in zip(*theirs, strict=True)), 4)}


def val_scores(source: str) -> list[float]:
    """A candidate's validation scores, recomputed here for the report only (outside the evaluator-call count):
    the candidates are this script's own scripted replies."""
    scope: dict = {}
    exec(compile(source, "sol.py", "exec"), scope)  # the bench's own scripted code
    return [float(scope["f"](int(v[1:]))) for v in VAL]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(n, args.iterations) for n in (0, 10, 1000)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'stored':>7} {'iters':>6} {'overhead p50 ms':>16} {'p95 ms':>8} {'evals ours':>11} {'evals GEPA':>11} "
          f"{'ratio':>6} {'raced':>6} {'best ours':>10} {'best GEPA':>10} {'envelope ours':>14} {'envelope GEPA':>14}")
    for r in rows:
        print(f"{r['stored']:>7} {r['iterations']:>6} {r['overhead_p50_ms']:>16} {r['overhead_p95_ms']:>8} "
              f"{r['evals_ours']:>11} {r['evals_gepa']:>11} {r['evals_ours'] / max(r['evals_gepa'], 1):>6.2f} "
              f"{r['raced']:>6} {r['best_mean_ours']:>10} {r['best_mean_gepa']:>10} {r['envelope_ours']:>14} "
              f"{r['envelope_gepa']:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
