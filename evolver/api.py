"""The Python entry points; the CLI calls these and only renders what they return."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ACCEPT_RULES, AUTO_BACKEND, FRONTIER_MODES, SINGLE_TASK_ID, Defaults, one_of
from .engine.budget import Budget
from .errors import UserInputError
from .eval_report import EvalReport, evaluate
from .registry import PROPOSERS
from .repo import RunRepo
from .store import Store
from .task import Task, load_task, reject_links

if TYPE_CHECKING:  # imported when called: `evolver status` must not pay for the engine and proposers
    from .engine.loop import Event
    from .init_task import InitResult
    from .runs import RunResult
    from .sandbox import CheckRecord, ImageRecord

__all__ = ["Budget", "EvalReport", "OptimizeResult", "evaluate", "export", "init_pytest", "optimize", "resume",
           "run", "sandbox_build", "sandbox_check", "show", "status"]

DEFAULT_RUNS_DIR = Path(Defaults.runs_dir)


def default_run_dir(task_path: str | Path) -> Path:
    """Where a run of this task goes when no run directory is named: runs/<task name>."""
    return DEFAULT_RUNS_DIR / load_task(task_path).name


def _one_of(flag: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise UserInputError(f"{flag}: expected {one_of(allowed)}, found {value!r}")


def run(
    task_path: str | Path,
    *,
    model: str = "",
    budget: Budget | None = None,
    api_base: str | None = None,
    temperature: float = Defaults.temperature,
    max_tokens: int = Defaults.max_tokens,
    repair_turns: int = Defaults.repair_turns,
    llm_timeout: float = Defaults.llm_timeout_s,
    llm_cache: str | Path | None = None,
    run_dir: str | Path | None = None,
    lessons: str | Path | None = None,
    minibatch: int | None = None,
    seed: int = Defaults.seed_rng,
    accept: str | None = None,
    frontier: str | None = None,
    merge: bool | None = None,
    max_merges: int | None = None,
    race: bool | None = None,
    workers: int | None = None,
    proposer: str | None = None,
    prompts: str | Path | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> RunResult:
    """Start an evolution run of a task folder (`evolver run`); the same call on an existing run continues it
    (with this budget and `llm_timeout`). Loop settings left None come from the task's [evolve] table, else
    evolver.config.Defaults. `llm_timeout` bounds each HTTP attempt of an LLM call, in seconds."""
    from .engine.loop import LoopConfig
    from .runs import ModelConfig, start_run

    _one_of("--accept", accept, ACCEPT_RULES)
    _one_of("--frontier", frontier, FRONTIER_MODES)
    if proposer is not None:
        PROPOSERS.check(proposer)
    if prompts is not None and not Path(prompts).is_dir():
        raise UserInputError(f"--prompts: expected a folder of prompt templates, found {str(prompts)!r} "
                             f"({'not a folder' if Path(prompts).exists() else 'no such path'})")
    task = load_task(task_path)
    evolve = task.evolve
    model_cfg = ModelConfig(model=model, api_base=api_base, temperature=temperature, max_tokens=max_tokens,
                            repair_turns=repair_turns, timeout_s=llm_timeout,
                            cache_dir=str(llm_cache) if llm_cache else None)
    loop = LoopConfig(minibatch=minibatch or evolve.minibatch, accept=accept or task.accept_rule,
                      frontier=frontier or evolve.frontier, seed=seed, workers=workers or Defaults.workers,
                      merge=evolve.merge if merge is None else merge, race=evolve.race if race is None else race,
                      race_confidence=evolve.race_confidence,
                      max_merges=evolve.max_merges if max_merges is None else max_merges)
    # Passed only when given, so a run without them does not depend on the engine's newer keywords.
    extra = {k: v for k, v in (("proposer", proposer), ("prompts", str(prompts) if prompts else None))
             if v is not None}
    return start_run(task_path, model_cfg, budget or Budget(), run_dir=run_dir, loop=loop,
                     lessons=str(lessons) if lessons else None, on_event=on_event, **extra)


def resume(run_dir: str | Path, *, budget: Budget | None = None, workers: int | None = None,
           llm_timeout: float | None = None, on_event: Callable[[Event], None] | None = None) -> RunResult:
    """Continue a stopped or killed run (`evolver resume`); `budget` and `llm_timeout` replace the stored ones,
    `workers` is for this session only."""
    from .runs import resume_run

    return resume_run(run_dir, budget=budget, workers=workers, on_event=on_event, llm_timeout=llm_timeout)


def status(run_dir: str | Path) -> dict[str, Any]:
    """A run's state, totals, accepted candidates with their validation objectives, proposals and merges."""
    from . import views

    return views.status(run_dir)


def show(run_dir: str | Path, candidate: str) -> dict[str, Any]:
    """One candidate (seed, best, c<N>, a branch or a sha): diff vs parent, scores, diagnosis, outcome."""
    from . import views

    return views.show(run_dir, candidate)


def export(run_dir: str | Path, candidate: str = Defaults.candidate, *, branch: str | None = None,
           patch: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """A candidate as a branch of the run repository, or as a patch file against the seed; a candidate that
    breaks the task's gates only with `force`."""
    from . import views

    return views.export(run_dir, candidate, branch=branch, patch=str(patch) if patch is not None else None,
                        force=force)


def init_pytest(repo: str | Path, target: str, *, out: str | Path | None = None, name: str | None = None,
                tests: str = Defaults.tests, bench: str = Defaults.bench_marker,
                timeout_s: float = Defaults.timeout_s, force: bool = False, allow_failing: bool = False,
                backend: str | None = None) -> InitResult:
    """Write a task folder for an existing repository with a pytest suite (`evolver init --pytest`)."""
    from .init_task import init_pytest_task

    return init_pytest_task(repo, target, out=out, name=name, tests=tests, bench=bench, timeout_s=timeout_s,
                            force=force, allow_failing=allow_failing, backend=backend)


def sandbox_build(*, rebuild: bool = False, mirror: str | None = None, task: str | Path | None = None,
                  progress: Callable[[str], None] = lambda _msg: None) -> ImageRecord:
    """Build the sandbox base image offline (and the task's image, when `task` has a Dockerfile)."""
    from .sandbox import build_image

    task_root = load_task(task).root if task is not None else None
    return build_image(rebuild=rebuild, mirror=mirror, task_root=task_root, progress=progress)


def sandbox_check(backend: str = AUTO_BACKEND) -> CheckRecord:
    """Run a self-test in a sandbox of `backend` and report the isolation in force."""
    from .sandbox import check

    return check(backend)


MODES = ("single-task", "multi-task", "generalization")


@dataclass(frozen=True)
class OptimizeResult:
    """What `optimize` returns: the best candidate (its text, or its files), the frontier, lineage, totals."""

    run_dir: str
    stop_reason: str  # for people
    stop_kind: str  # config.STOP_KINDS: budget | target | patience | stop_file | llm_failure | error | interrupted
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


def _place_function_task(run_dir: Path, seed: str | Path, examples: dict[str, Any], objective: str,
                         background: str, file_name: str) -> str | None:
    """The task folder of a function-evaluated run: written for a new run; for an existing one, built aside and
    compared, never rewritten (another process may be running it, and a run's task must not change)."""
    import tempfile

    target = run_dir / "task"
    if not (run_dir / "run.db").exists() or not (target / "task.toml").exists():
        return _write_function_task(target, seed, examples, objective, background, file_name, run_dir.resolve().name)
    with tempfile.TemporaryDirectory(prefix="evolver-task-") as tmp:
        single = _write_function_task(Path(tmp) / "task", seed, examples, objective, background, file_name,
                                      run_dir.resolve().name)
        same = load_task(Path(tmp) / "task").digest == load_task(target).digest
    if not same:
        raise UserInputError(f"{run_dir}: expected the seed, examples and objective of the run in this directory, "
                             "found others; pick another run_dir= for a new run (nothing was changed)")
    return single


def _write_function_task(root: Path, seed: str | Path, examples: dict[str, Any], objective: str, background: str,
                         file_name: str, name: str) -> str | None:
    """A task folder for a seed text or folder evaluated by a Python function; returns the single file's name."""
    import json
    import shutil
    import tomllib

    seed_dir = root / "seed"
    if isinstance(seed, Path):
        if not seed.is_dir():
            raise UserInputError(f"seed: expected a text or an existing folder, found {seed} missing")
        reject_links(seed)  # copied, a link would become a copy of whatever it points at
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    single: str | None = None
    if isinstance(seed, Path):
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
    toml = (f'[task]\nname = {json.dumps(name)}\nmutable = {json.dumps(mutable)}\n'
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
    llm_timeout: float | None = None,
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
    dict path -> text. An existing `run_dir` is resumed. `llm_timeout` bounds each HTTP attempt of an LLM call
    (seconds; default Defaults.llm_timeout_s, or a resumed run's own). A run whose LLM cannot be used stops with
    `stop_kind == "llm_failure"` and says why in `stop_reason`."""
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
        single = _place_function_task(path, Path(seed) if isinstance(seed, Path) else seed, examples, objective,
                                      background, file_name)
        task = path / "task"
        assert evaluator is not None
        with_example = mode != "single-task"

        def make_evaluator(t: Task, store: Store) -> FunctionEvaluator:
            return FunctionEvaluator(evaluator, examples, store, t.digest, single, with_example=with_example)
    else:
        path = Path(run_dir) if run_dir is not None else DEFAULT_RUNS_DIR / load_task(task).name
    if (path / "run.db").exists():
        result = resume_run(path, budget=budget, on_event=on_event, make_evaluator=make_evaluator,
                            llm_timeout=llm_timeout)
    else:
        timeout = Defaults.llm_timeout_s if llm_timeout is None else llm_timeout
        result = start_run(task, ModelConfig(model=model, api_base=api_base, timeout_s=timeout), budget,
                           run_dir=path, loop=loop, lessons=lessons, on_event=on_event,
                           make_evaluator=make_evaluator, proposer=proposer,
                           prompts=str(prompts) if prompts is not None else None)
    return _optimize_result(result, path, single, mode if seed is not None else _task_mode(path))


def _task_mode(path: Path) -> str:
    from .run_state import read_state

    instances = read_state(path).task.instances
    if instances is not None and instances.train == (SINGLE_TASK_ID,) and not instances.val:
        return "single-task"
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
        repo = RunRepo.open_existing(path / "repo")
        files = {k: v.decode("utf-8", errors="replace") for k, v in repo.read_files(best).items()}
    shown: str | dict[str, str] | None = files.get(single) if single is not None and files is not None else files
    per_instance = {i: branch(c[0]) for i, c in state.standings.best_per_instance().items()} \
        if mode != "generalization" else {}
    return OptimizeResult(
        run_dir=str(path), stop_reason=result.stop_reason, stop_kind=result.stop_kind,
        best_branch=branch(best) if best else None, best=shown,
        best_objectives=state.standings.best_objectives(),
        frontier=tuple(branch(m) for m in state.standings.frontier().members),
        lineage=tuple(branch(s) for s in state.lineage(best)) if best else (), iterations=result.iterations,
        evals=result.evals, usd=result.usd, seconds=result.seconds, mode=mode, best_per_instance=per_instance)
