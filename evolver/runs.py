"""Runs: create, resume and inspect an evolution run directory (repo/, run.db, lessons.jsonl).

The run's settings (task, model, budget, loop settings) are stored in run.db at creation, so `resume`
needs nothing but the run directory; flags given to `resume` override the stored ones (a larger budget, another
LLM timeout). Every LLM call is recorded with the proposal it was made for, and bounded by the time left in the
run's budget; a failure that makes the LLM unusable (nothing listening, a rejected key) stops the run at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import BUILTIN_MODEL, DEFAULT_PROPOSER, RUN_STOPPING_LLM_ERRORS, Defaults
from .engine.budget import Budget, StopReason, Usage
from .engine.loop import Engine, Event, LoopConfig, current_proposal
from .errors import EvolverError, UserInputError
from .evaluation import CandidateEvaluator, Evaluator
from .lessons import LessonLog
from .proposers.base import Proposer
from .registry import PROPOSERS
from .repo import RunRepo, seed_branch
from .run_lock import RunLock
from .sandbox import task_sandbox
from .store import Store
from .task import Task, load_task, not_utf8, not_utf8_note


@dataclass(frozen=True)
class ModelConfig:
    model: str
    api_base: str | None = None
    temperature: float = Defaults.temperature
    max_tokens: int = Defaults.max_tokens
    repair_turns: int = Defaults.repair_turns
    timeout_s: float = Defaults.llm_timeout_s  # per HTTP attempt; the run's time left cuts it shorter
    cache_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    stop_reason: str  # for people
    stop_kind: str  # config.STOP_KINDS: what code branches on (`evolver run` exits 1 on llm_failure)
    best: str | None
    best_branch: str | None
    best_objectives: dict[str, float | None] | None
    frontier: tuple[str, ...]
    frontier_branches: tuple[str, ...]
    iterations: int
    evals: int
    usd: float
    seconds: float


BUILTIN = BUILTIN_MODEL  # the LLM-free mutation proposer
NO_MODEL = ("--model: expected a litellm model string (e.g. openai/gpt-4.1-mini with OPENAI_API_KEY set, "
            "anthropic/... with ANTHROPIC_API_KEY, gemini/... with GEMINI_API_KEY), or openai/NAME with "
            "--api-base URL for a local OpenAI-compatible server (Ollama, vLLM), or builtin for the LLM-free "
            "proposer; found none")


def check_llm_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not timeout_s > 0:
        raise UserInputError(f"--llm-timeout: expected a positive number of seconds, found {timeout_s!r}")


def check_model(model: ModelConfig) -> None:
    """Fail early, with what to set, when no LLM call could succeed."""
    check_llm_timeout(model.timeout_s)
    if model.model == BUILTIN:
        return
    if not model.model:
        raise UserInputError(NO_MODEL)
    from .credentials import resolve_credentials

    problem = resolve_credentials(model.model, model.api_base)
    if problem:
        raise UserInputError(problem)


def proposer_name(model: ModelConfig, proposer: str | None) -> str:
    """The proposer a run uses: the one named, else the builtin one for --model builtin, else the LLM's."""
    return proposer or ("builtin" if model.model == BUILTIN else DEFAULT_PROPOSER)


class _EngineLink:
    """What a run's LLM reports to: the store, and the engine once it exists (the LLM is built first, inside
    the proposers the engine is given)."""

    def __init__(self, store: Store, run: str) -> None:
        self.store, self.run = store, run
        self.engine: Engine | None = None

    def time_left(self) -> float | None:
        return None if self.engine is None else self.engine.time_left()

    def on_call(self, record: Any) -> None:
        """Every call (an evolver.llm.LLMCallRecord), from the thread that made it: linked to the proposal that
        thread is working on."""
        self.store.record_llm_call(self.run, current_proposal.get(), record)
        if record.error_kind in RUN_STOPPING_LLM_ERRORS and self.engine is not None:
            # No retry and no other prompt fixes these: stop now rather than spend evaluator calls on further
            # minibatches whose proposals cannot be made.
            self.engine.stop(StopReason("llm_failure", record.error or record.error_kind))


def _make_proposers(model: ModelConfig, link: _EngineLink, proposer: str | None,
                    prompts: str | None) -> tuple[Proposer, Proposer]:
    """The run's proposer (from the registry) and its merger: both use the same LLM (or, with builtin, none)."""
    check_model(model)
    from .proposers.base import ProposerSettings
    from .proposers.merge import LLMResolver, MergeProposer, ScoreResolver
    from .proposers.prompts import load_prompts

    templates = load_prompts(prompts)
    factory = PROPOSERS.get(proposer_name(model, proposer))  # an unknown name fails here, before any call
    llm = None
    if model.model != BUILTIN:
        from .llm import LLM, LLMConfig

        llm = LLM(LLMConfig(model=model.model, api_base=model.api_base, temperature=model.temperature,
                            max_tokens=model.max_tokens, timeout_s=model.timeout_s, cache_dir=model.cache_dir),
                  on_call=link.on_call, time_left=link.time_left)
    made = factory(ProposerSettings(model=model.model, llm=llm, repair_turns=model.repair_turns, prompts=templates))
    resolver = ScoreResolver() if llm is None else LLMResolver(llm, model.repair_turns, templates)
    return made, MergeProposer(resolver)


EvaluatorFactory = Callable[[Task, Store], CandidateEvaluator]


def sandbox_evaluator(task: Task, store: Store) -> CandidateEvaluator:
    return Evaluator(task, task_sandbox(task), store)


def _settings(store: Store, name: str, budget: Budget | None, llm_timeout: float | None) -> dict[str, Any]:
    """The run's stored settings, with what `resume` (or the same `run` again) replaces written back first."""
    row = store.run(name)
    assert row is not None
    cfg = row.config
    updates: dict[str, Any] = {}
    if budget is not None and budget.to_json():  # a budget with no limit given is no override
        updates["budget"] = budget.to_json()
    if llm_timeout is not None:
        updates["model"] = {**cfg["model"], "timeout_s": llm_timeout}
    if updates:
        cfg = {**cfg, **updates}
        store.update_run(name, config=cfg)
    return cfg


def _engine(run_dir: Path, store: Store, on_event: Callable[[Event], None] | None,
            budget_override: Budget | None, workers: int | None,
            make_evaluator: EvaluatorFactory | None, llm_timeout: float | None = None) -> tuple[Engine, str]:
    name = run_dir.resolve().name
    row = store.run(name)
    assert row is not None
    task = load_task(row.task_path)
    if task.digest != row.task_digest:
        raise UserInputError(f"{row.task_path}: the task's files changed since run {name} began; results would "
                             "not be comparable. Start a new run (evolver run --run DIR)")
    cfg = _settings(store, name, budget_override, llm_timeout)
    budget = Budget.from_json(cfg["budget"])
    repo = RunRepo.open_or_init(run_dir / "repo")
    seed = repo.branch_sha(seed_branch(name))
    if seed is None:
        seed = repo.commit_folder(task.seed_dir, f"seed of {task.name}", kind="seed", run=name)
        repo.set_branch(seed_branch(name), seed)
        store.record_candidate(name, seed, repo.tree_sha(seed), seed_branch(name), (), "seed")
    if make_evaluator is None:
        if cfg.get("function_evaluator"):
            raise UserInputError(f"{run_dir}: this run is evaluated by a Python function; resume it from Python "
                                 "with evolver.optimize(..., run_dir=...) and the same evaluator")
        make_evaluator = sandbox_evaluator
    evaluator = make_evaluator(task, store)
    model = ModelConfig(**cfg["model"])
    loop = LoopConfig(**cfg["loop"])
    if workers:  # `resume --workers N`: this session only
        loop = replace(loop, workers=workers)
    chosen = cfg.get("proposer", {})
    link = _EngineLink(store, name)
    proposer, merger = _make_proposers(model, link, chosen.get("name"), chosen.get("prompts"))
    engine = link.engine = Engine(
        task=task, run=name, repo=repo, store=store, evaluator=evaluator, proposer=proposer,
        lessons=LessonLog(cfg["lessons"]), budget=budget, config=loop, on_event=on_event,
        usd_spent=lambda: store.llm_totals(name)["usd"], merger=merger)
    return engine, seed


def _refused(store: Store, name: str, engine: Engine | None, exc: BaseException) -> None:
    """The machine refused a write (a read-only or full disk, permissions): what is stored stays, and the run is
    marked interrupted with the reason, when the store can still be written (else it stays `running`, as after
    a kill). `evolver resume` continues once the user has fixed it; the caller re-raises the error."""
    if engine is not None:
        with suppress(OSError, sqlite3.DatabaseError):
            engine.save_progress()
    with suppress(OSError, sqlite3.DatabaseError):
        store.update_run(name, state="interrupted", stop_reason=str(exc))


def _say_not_utf8(engine: Engine, seed: str, on_event: Callable[[Event], None] | None) -> None:
    """Once at start: mutable files no proposer can edit, because they are not UTF-8 text."""
    found = not_utf8(engine.task, engine.repo.read_files(seed))
    if found and on_event is not None:
        on_event(Event("warning", engine.usage.iterations, not_utf8_note(found), engine.usage))


def _drive(run_dir: Path, store: Store, on_event, budget_override: Budget | None, workers: int | None,
           make_evaluator: EvaluatorFactory | None = None, llm_timeout: float | None = None) -> RunResult:
    name = run_dir.resolve().name
    try:
        engine, seed = _engine(run_dir, store, on_event, budget_override, workers, make_evaluator, llm_timeout)
    except (OSError, sqlite3.DatabaseError) as exc:
        _refused(store, name, None, exc)
        raise
    _say_not_utf8(engine, seed, on_event)
    store.update_run(name, state="running", stop_reason=None, stop_kind=None)
    try:
        engine.start(seed)
        reason = engine.run()
    except KeyboardInterrupt:
        engine.save_progress()
        store.update_run(name, state="stopped", stop_reason="interrupted", stop_kind="interrupted")
        raise
    except EvolverError as exc:  # e.g. the task's evaluator failed: the run stops, saying why
        engine.save_progress()
        store.update_run(name, state="stopped", stop_reason=f"error: {str(exc).splitlines()[0][:300]}",
                         stop_kind="error")
        raise
    except (OSError, sqlite3.DatabaseError) as exc:
        _refused(store, name, engine, exc)
        raise
    finally:
        engine.evaluator.close()
    def branch(sha: str) -> str:
        cand = store.candidate(sha)
        return cand.branch if cand and cand.branch else sha[:12]

    best = engine.best()
    members = engine.standings.frontier().members
    return RunResult(run_dir=str(run_dir), stop_reason=reason.message, stop_kind=reason.kind, best=best,
                     best_branch=branch(best) if best else None, best_objectives=engine.best_objectives(),
                     frontier=members, frontier_branches=tuple(branch(m) for m in members),
                     iterations=engine.usage.iterations, evals=engine.usage.evals, usd=engine.usage.usd,
                     seconds=engine.usage.seconds)


def start_run(task_path: str | Path, model: ModelConfig, budget: Budget, *, run_dir: str | Path | None = None,
              loop: LoopConfig | None = None, lessons: str | None = None,
              on_event: Callable[[Event], None] | None = None,
              make_evaluator: EvaluatorFactory | None = None, proposer: str | None = None,
              prompts: str | None = None) -> RunResult:
    task = load_task(task_path)
    if task.instances is None or not task.instances.train:
        raise UserInputError(f"{task.root / 'task.toml'}: [evaluate] instances: expected train instances (and val "
                             "instances to generalise to) for an evolution run, found none")
    check_model(model)  # before anything is written
    PROPOSERS.get(proposer_name(model, proposer))
    from .proposers.prompts import load_prompts

    if prompts is None and task.evolve.prompts is not None:
        prompts = str(task.evolve.prompts)  # the flag wins over the task's own templates
    load_prompts(prompts)
    if not any(v is not None for v in (budget.max_evals, budget.max_usd, budget.max_seconds, budget.max_iterations)):
        raise UserInputError("budget: expected at least one of --budget-evals, --budget-usd, --budget-minutes, "
                             "--max-iterations, found none (a run needs a limit)")
    path = Path(run_dir) if run_dir is not None else Path(Defaults.runs_dir) / task.name
    with RunLock(path):  # held for the run's whole life: one writer per run directory
        return _start_locked(task, path, model, budget, loop=loop, lessons=lessons, on_event=on_event,
                             make_evaluator=make_evaluator, proposer=proposer, prompts=prompts)


def _start_locked(task: Task, path: Path, model: ModelConfig, budget: Budget, *, loop: LoopConfig | None,
                  lessons: str | None, on_event: Callable[[Event], None] | None,
                  make_evaluator: EvaluatorFactory | None, proposer: str | None, prompts: str | None) -> RunResult:
    if (path / "run.db").exists():
        probe = Store(path / "run.db")
        try:
            existing = probe.run(path.resolve().name)
        finally:
            probe.close()
        if existing is not None:
            # Running the same command again continues the run (with this budget), like `evolver resume`.
            if existing.task_path != str(task.root) or existing.config["model"]["model"] != model.model:
                raise UserInputError(f"{path}: expected a new run directory or a run of the same task and model, "
                                     f"found a run of {existing.task_path} with {existing.config['model']['model']}; "
                                     "pick another --run")
            if loop is not None or proposer is not None:
                stored = {**existing.config.get("loop", {}),
                          "proposer": existing.config.get("proposer", {}).get("name", proposer_name(model, None))}
                given = {**(loop.to_json() if loop is not None else {}),
                         **({"proposer": proposer_name(model, proposer)} if proposer is not None else {})}
                changed = sorted(k for k in given if k != "workers" and k in stored and stored[k] != given[k])
                if changed:
                    shown = ", ".join(f"{k}: run has {stored[k]!r}, given {given[k]!r}" for k in changed)
                    raise UserInputError(f"{path}: running the same command again continues the run with its own "
                                         f"settings, and these differ ({shown}); drop those flags to continue, or "
                                         "pick another --run for a run with the new settings")
            if on_event is not None:  # not silently: the user may have meant a new run
                on_event(Event("warning", existing.iteration, f"{path} holds a run of this task already "
                               f"({existing.iteration} iterations, {existing.evals_used} evaluator calls, "
                               f"{existing.state}): continuing it with this budget (another --run starts anew)",
                               Usage(evals=existing.evals_used, iterations=existing.iteration)))
            return _resume_locked(path, budget, None, on_event, make_evaluator, model.timeout_s)
    name = path.resolve().name
    store = Store(path / "run.db")
    try:
        store.record_task(task.digest, task.name, str(task.root), {"objectives": task.objectives})
        config = {"model": model.to_json(), "budget": budget.to_json(), "loop": (loop or LoopConfig(
                      minibatch=task.evolve.minibatch, accept=task.evolve.accept, frontier=task.evolve.frontier,
                      merge=task.evolve.merge, max_merges=task.evolve.max_merges)
                  ).to_json(),
                  "lessons": str(Path(lessons).resolve()) if lessons else str((path / "lessons.jsonl").resolve()),
                  "function_evaluator": make_evaluator is not None,
                  "proposer": {"name": proposer_name(model, proposer),
                               "prompts": str(Path(prompts).resolve()) if prompts else None}}
        store.create_run(name, str(task.root), task.digest, config)
        return _drive(path, store, on_event, None, None, make_evaluator)
    finally:
        store.close()


def resume_run(run_dir: str | Path, *, budget: Budget | None = None, workers: int | None = None,
               on_event: Callable[[Event], None] | None = None,
               make_evaluator: EvaluatorFactory | None = None, llm_timeout: float | None = None) -> RunResult:
    """Continue a run; `budget` and `llm_timeout` (seconds per LLM attempt), when given, replace the stored ones."""
    check_llm_timeout(llm_timeout)
    path = Path(run_dir)
    if not (path / "run.db").exists():
        raise UserInputError(f"{path}: expected a run directory (with run.db), found none")
    with RunLock(path):
        return _resume_locked(path, budget, workers, on_event, make_evaluator, llm_timeout)


def _resume_locked(path: Path, budget: Budget | None, workers: int | None, on_event: Callable[[Event], None] | None,
                   make_evaluator: EvaluatorFactory | None, llm_timeout: float | None = None) -> RunResult:
    store = Store(path / "run.db")
    try:
        if store.run(path.resolve().name) is None:
            raise UserInputError(f"{path}: expected an evolution run, found only evaluations (evolver eval)")
        return _drive(path, store, on_event, budget, workers, make_evaluator, llm_timeout)
    finally:
        store.close()
