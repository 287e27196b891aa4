"""The Python entry points; the CLI calls these and only renders what they return."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .evaluation import CandidateRef, Evaluator, InstanceResult, instances_for
from .repo import RunRepo, seed_branch
from .sandbox import task_sandbox
from .store import Store
from .task import SPLITS, Task, load_task

DEFAULT_RUNS_DIR = Path("runs")


@dataclass(frozen=True)
class EvalReport:
    task: str
    run_dir: str
    ref: str
    sha: str
    tree: str
    backend: str
    isolation: dict[str, Any]
    trusted_scores: bool
    objectives: dict[str, str]
    results: tuple[InstanceResult, ...]
    wall_s: float
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per split: instances, failures, mean score and mean of each objective over ok instances."""
        out: dict[str, dict[str, Any]] = {}
        for split in (*SPLITS, None):
            rs = [r for r in self.results if r.split == split]
            if not rs:
                continue
            ok = [r for r in rs if r.ok]
            means: dict[str, float | None] = {}
            for name in self.objectives:
                if name == "score":
                    continue
                vals = [r.objectives.get(name) for r in ok if r.objectives.get(name) is not None]
                means[name] = sum(vals) / len(vals) if vals else None  # type: ignore[arg-type]
            out[split or "-"] = {
                "instances": len(rs), "failed": len(rs) - len(ok),
                "mean_score": sum(r.score for r in rs) / len(rs), "mean_objectives_ok": means,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "run_dir": self.run_dir, "ref": self.ref, "sha": self.sha, "tree": self.tree,
            "backend": self.backend, "isolation": self.isolation, "trusted_scores": self.trusted_scores,
            "objectives": self.objectives, "summary": self.summary(), "wall_s": round(self.wall_s, 3),
            "notes": list(self.notes), "results": [r.to_json() for r in self.results],
        }


def _candidate_from_seed(task: Task, repo: RunRepo, run: str, notes: list[str]) -> tuple[str, str]:
    sha = repo.commit_folder(task.seed_dir, f"seed of {task.name}", kind="seed", run=run)
    branch = seed_branch(run)
    current = repo.branch_sha(branch)
    if current is None:
        repo.set_branch(branch, sha)
        return branch, sha
    if repo.tree_sha(current) == repo.tree_sha(sha):
        return branch, current
    # The seed folder changed since the run began: evaluate it as it is now, keep the old seed reachable.
    repo.keep_ref(f"{run}/previous-seeds/{current[:12]}", current)
    repo.set_branch(branch, sha)
    notes.append(f"the seed folder changed since {branch} was made; {branch} now points at the new seed "
                 f"(the old one is kept as refs/evolver/{run}/previous-seeds/{current[:12]})")
    return branch, sha


def evaluate(
    task_path: str | Path,
    ref: str | None = None,
    *,
    split: str = "all",
    instances: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    repo_path: str | Path | None = None,
    use_cache: bool = True,
    backend: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Evaluate the task's seed (or `ref` of the run repository, or of `repo_path`) on a split."""
    started = time.monotonic()
    task = load_task(task_path)
    if split not in (*SPLITS, "all"):
        raise UserInputError(f"--split: expected one of train, val, test, all, found {split!r}")
    run_path = Path(run_dir) if run_dir is not None else DEFAULT_RUNS_DIR / task.name
    run = run_path.resolve().name
    notes: list[str] = []
    sandbox = task_sandbox(task, backend)
    store = Store(run_path / "run.db")
    try:
        store.record_task(task.digest, task.name, str(task.root), {"objectives": task.objectives,
                                                                  "kind": task.kind})
        repo = RunRepo.open_or_init(run_path / "repo")
        if repo_path is not None:
            source = RunRepo.open_existing(repo_path)
            sha = source.resolve(ref or "HEAD")
            ref_name = ref or "HEAD"
            tree, archive = source.tree_sha(sha), (lambda: source.archive(sha))
        elif ref is not None:
            sha = repo.resolve(ref)
            ref_name, tree = ref, repo.tree_sha(sha)
            archive = lambda: repo.archive(sha)  # noqa: E731
        else:
            ref_name, sha = _candidate_from_seed(task, repo, run, notes)
            tree = repo.tree_sha(sha)
            archive = lambda: repo.archive(sha)  # noqa: E731
            store.record_candidate(run, sha, tree, ref_name, (), "seed")
        candidate = CandidateRef(sha=sha, tree=tree, archive=archive)
        evaluator = Evaluator(task, sandbox, store, workers=workers)
        collected = evaluator.collect_tests(candidate) if task.instances is None else None
        pairs = instances_for(task, split, collected)
        if instances:
            known = {i: s for i, s in instances_for(task, "all", collected)}
            unknown = [i for i in instances if i not in known]
            if unknown:
                raise UserInputError(f"--instances: expected ids of the task's instances, found unknown "
                                     f"{', '.join(unknown[:5])}")
            pairs = [(i, known[i]) for i in instances]
        if not pairs:
            raise UserInputError(f"--split {split}: expected instances in that split, found none")
        results = evaluator.evaluate(candidate, pairs, use_cache=use_cache, on_progress=on_progress)
        isolation = sandbox.describe()
    finally:
        store.close()
        sandbox.close()
    return EvalReport(
        task=task.name, run_dir=str(run_path), ref=ref_name, sha=sha, tree=tree, backend=sandbox.name,
        isolation=isolation, trusted_scores=task.kind == "python", objectives=dict(task.objectives),
        results=tuple(results), wall_s=time.monotonic() - started, notes=tuple(notes))


SINGLE_TASK_ID = "task"  # the one instance of single-task search
MODES = ("single-task", "multi-task", "generalization")


@dataclass(frozen=True)
class OptimizeResult:
    """What `optimize` returns: the best candidate (its text, or its files), the frontier, lineage, totals."""

    run_dir: str
    stop_reason: str
    best_branch: str | None
    best: str | dict[str, str] | None
    best_objectives: dict[str, float | None] | None
    frontier: tuple[str, ...]  # branches
    lineage: tuple[str, ...]  # branches from the seed to the best candidate
    iterations: int
    evals: int
    usd: float
    seconds: float
    mode: str = "generalization"  # single-task | multi-task | generalization
    best_per_instance: dict[str, str] = field(default_factory=dict)  # instance id -> branch of its best candidate


def search_mode(trainset: Sequence[Any], valset: Sequence[Any]) -> str:
    """GEPA's three modes of optimize_anything: one problem, a dataset, or a dataset with a validation set."""
    if valset and not trainset:
        raise UserInputError("optimize: valset= needs a trainset= (the examples to learn from)")
    return "generalization" if valset else "multi-task" if trainset else "single-task"


def _write_function_task(root: Path, seed: str | Path, examples: dict[str, Any], objective: str, background: str,
                         file_name: str) -> str | None:
    """A task folder for a seed text or folder evaluated by a Python function; returns the single file's name."""
    import json
    import shutil
    import tomllib

    seed_dir = root / "seed"
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    single: str | None = None
    if isinstance(seed, Path):
        if not seed.is_dir():
            raise UserInputError(f"seed: expected a text or an existing folder, found {seed} missing")
        shutil.copytree(seed, seed_dir)
        mutable = ["**/*"]
    else:
        seed_dir.mkdir(parents=True)
        (seed_dir / file_name).write_text(seed, encoding="utf-8")
        single, mutable = file_name, [file_name]
    # The examples' digest is part of the task: other examples, other cache key.
    (root / "examples.digest").write_text(_examples_digest(examples))
    train = [k for k in examples if not k.startswith("val-")]
    val = [k for k in examples if k.startswith("val-")]
    (root / "instances.toml").write_text(f"train = {json.dumps(train)}\n" + (f"val = {json.dumps(val)}\n"
                                                                              if val else ""))
    (root / "evaluate.py").write_text(
        '"""Evaluated by the Python function given to evolver.optimize(); nothing runs from this file."""\n\n'
        "def produce(inputs):\n    raise RuntimeError('evaluated by a Python function')\n\n\n"
        "def judge(instance, inputs, output, usage):\n    raise RuntimeError('evaluated by a Python function')\n")
    toml = (f'[task]\nname = {json.dumps(root.resolve().parent.name)}\nmutable = {json.dumps(mutable)}\n'
            f"objective = {json.dumps(objective)}\nbackground = {json.dumps(background)}\n")
    tomllib.loads(toml)  # what we write must be what we read
    (root / "task.toml").write_text(toml)
    return single


def _examples_digest(examples: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(repr(sorted(examples.items(), key=lambda kv: kv[0])).encode()).hexdigest()


def optimize(
    task: str | Path | None = None,
    *,
    seed: str | Path | None = None,
    evaluator: Callable[..., Any] | None = None,
    trainset: Sequence[Any] = (),
    valset: Sequence[Any] = (),
    objective: str = "",
    background: str = "",
    model: str,
    api_base: str | None = None,
    proposer: str | None = None,
    budget: Any = None,
    max_evals: int | None = None,
    max_usd: float | None = None,
    max_iterations: int | None = None,
    run_dir: str | Path | None = None,
    loop: Any = None,
    lessons: str | None = None,
    prompts: str | Path | None = None,
    on_event: Callable[[Any], None] | None = None,
    file_name: str = "candidate.txt",
) -> OptimizeResult:
    """Evolve a task folder (`task=`), or a seed text/folder scored by a Python function, in one of three modes:

    - single-task search (no dataset): `evaluator(candidate)` scores one hard problem;
    - multi-task search (`trainset=` only): `evaluator(candidate, example)` per example; candidates are validated
      on the whole dataset, a candidate best on one example is a parent for the others, and the result holds
      the best candidate per example (`best_per_instance`);
    - generalization (`trainset=` and `valset=`): learn on train, select on val.

    The evaluator returns a score or `(score, side_info)`. A text seed's candidate is its text; a folder's is a
    dict path -> text. An existing `run_dir` is resumed."""
    from .engine.budget import Budget
    from .function_eval import FunctionEvaluator
    from .runs import ModelConfig, resume_run, start_run

    if (task is None) == (seed is None):
        raise UserInputError("optimize: expected exactly one of task= (a task folder) or seed= (text or folder)")
    if seed is not None and evaluator is None:
        raise UserInputError("optimize: a seed needs evaluator= (a function scoring a candidate)")
    mode = search_mode(trainset, valset)
    budget = budget or Budget(max_evals=max_evals, max_usd=max_usd, max_iterations=max_iterations)
    make_evaluator = None
    single: str | None = None
    if seed is not None:
        path = Path(run_dir) if run_dir is not None else DEFAULT_RUNS_DIR / "optimize"
        examples: dict[str, Any] = ({SINGLE_TASK_ID: None} if mode == "single-task" else
                                    {f"train-{i}": x for i, x in enumerate(trainset)}
                                    | {f"val-{i}": x for i, x in enumerate(valset)})
        single = _write_function_task(path / "task", Path(seed) if isinstance(seed, Path) else seed, examples,
                                      objective, background, file_name)
        task = path / "task"
        assert evaluator is not None
        with_example = mode != "single-task"

        def make_evaluator(t: Task, store: Store) -> FunctionEvaluator:
            return FunctionEvaluator(evaluator, examples, store, t.digest, single, with_example=with_example)
    else:
        path = Path(run_dir) if run_dir is not None else DEFAULT_RUNS_DIR / load_task(task).name
    if (path / "run.db").exists():
        result = resume_run(path, budget=budget, on_event=on_event, make_evaluator=make_evaluator)
    else:
        result = start_run(task, ModelConfig(model=model, api_base=api_base), budget, run_dir=path, loop=loop,
                           lessons=lessons, on_event=on_event, make_evaluator=make_evaluator, proposer=proposer,
                           prompts=str(prompts) if prompts is not None else None)
    return _optimize_result(result, path, single, mode if seed is not None else _task_mode(path))


def _task_mode(path: Path) -> str:
    from .run_state import read_state

    instances = read_state(path).task.instances
    return search_mode(instances.train if instances else (), instances.val if instances else ())


def _optimize_result(result: Any, path: Path, single: str | None, mode: str) -> OptimizeResult:
    """The run's result as read from its store, the same reader `evolver status` uses."""
    from .run_state import read_state

    state = read_state(path)
    best = state.best()

    def branch(sha: str) -> str:
        return state.branches.get(sha, sha[:12])

    files = None
    if best is not None:
        repo = RunRepo.open_or_init(path / "repo")
        files = {k: v.decode("utf-8", errors="replace") for k, v in repo.read_files(best).items()}
    shown: str | dict[str, str] | None = files.get(single) if single is not None and files is not None else files
    per_instance = {i: branch(c[0]) for i, c in state.standings.best_per_instance().items()} \
        if mode != "generalization" else {}
    return OptimizeResult(
        run_dir=str(path), stop_reason=result.stop_reason, best_branch=branch(best) if best else None, best=shown,
        best_objectives=state.standings.best_objectives(),
        frontier=tuple(branch(m) for m in state.standings.frontier().members),
        lineage=tuple(branch(s) for s in state.lineage(best)) if best else (), iterations=result.iterations,
        evals=result.evals, usd=result.usd, seconds=result.seconds, mode=mode, best_per_instance=per_instance)
