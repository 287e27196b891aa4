"""Allowed values and defaults, defined once.

task.toml validation, the CLI, `optimize()` keywords, the engine and the store all read their choices and
defaults from here: a new status or a changed default is one edit, not five. Leaf module: imports nothing of
evolver.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# -- tasks ------------------------------------------------------------------------------------------------
Split = Literal["train", "val", "test"]
SPLITS: Final[tuple[str, ...]] = get_args(Split)
ALL_SPLITS: Final = "all"  # `evolver eval --split all`: every split
EVAL_SPLITS: Final[tuple[str, ...]] = (*SPLITS, ALL_SPLITS)
# evolver's own task kinds; others come from the "evolver.task_kinds" entry point group (evolver.registry).
TaskKind = Literal["python", "pytest"]
TASK_KINDS: Final[tuple[str, ...]] = get_args(TaskKind)
# How the sandbox harness runs a task's instances: every task kind runs in one of these.
HarnessMode = Literal["python", "pytest"]
HARNESS_MODES: Final[tuple[str, ...]] = get_args(HarnessMode)
Direction = Literal["max", "min"]
DIRECTIONS: Final[tuple[str, ...]] = get_args(Direction)
PRIMARY_OBJECTIVE: Final = "score"  # always an objective, always first, always maximised
SINGLE_TASK_ID: Final = "task"  # the one instance of a task without instances (single-task search)
PRIMARY_DIRECTION: Final = "max"
# optimize: judged and on the frontier; gate: a constraint that must hold; report: shown only (evolver.objectives)
ObjectiveRole = Literal["optimize", "gate", "report"]
OBJECTIVE_ROLES: Final[tuple[str, ...]] = get_args(ObjectiveRole)

# -- evolution --------------------------------------------------------------------------------------------
FrontierMode = Literal["instance", "objective", "hybrid"]
FRONTIER_MODES: Final[tuple[str, ...]] = get_args(FrontierMode)
# strict: the score rises; ties: it does not fall; pareto: one optimized objective improves, none regresses.
AcceptRule = Literal["strict", "ties", "pareto"]
ACCEPT_RULES: Final[tuple[str, ...]] = get_args(AcceptRule)

# -- sandboxes --------------------------------------------------------------------------------------------
# evolver's own backends; others come from the "evolver.sandboxes" entry point group (evolver.registry).
# `auto` is no backend but the rule that picks docker or process on this machine.
Backend = Literal["auto", "docker", "process"]
BACKENDS: Final[tuple[str, ...]] = get_args(Backend)
AUTO_BACKEND: Final = "auto"
Isolation = Literal["pool", "strict"]
ISOLATIONS: Final[tuple[str, ...]] = get_args(Isolation)

# -- outcomes of one instance ------------------------------------------------------------------------------
InstanceStatus = Literal[
    "ok", "invalid", "error", "timeout", "memory", "output_limit", "crashed", "no_output",  # evaluator mode
    "failed", "skipped", "missing",  # pytest mode
    "evaluator_error", "sandbox_error",  # not the candidate's fault
]
INSTANCE_STATUSES: Final[tuple[str, ...]] = get_args(InstanceStatus)
# The candidate produced no result: no score to be best with.
FAILED_STATUSES: Final = frozenset({"error", "timeout", "memory", "crashed", "no_output", "output_limit"})
# Not the candidate's fault: never cached, so the next evaluation tries again.
UNCACHED_STATUSES: Final = frozenset({"evaluator_error", "sandbox_error"})
# Statuses that measured the candidate without a failure (a skipped test failed nothing).
PASSING_STATUSES: Final = frozenset({"ok", "skipped"})

# -- outcomes of one proposal ------------------------------------------------------------------------------
ProposalStatus = Literal["pending", "accepted", "rejected", "failed"]
PROPOSAL_STATUSES: Final[tuple[str, ...]] = get_args(ProposalStatus)
# Why a proposal ended as it did (the `reason` of its row and of its lesson).
OutcomeReason = Literal[
    "pending", "accepted", "worse", "tie", "crashed", "patch_failed", "syntax", "not_mutable", "noop", "truncated",
    "duplicate", "llm_error", "interrupted", "conflict_unresolved", "merge_error", "failed", "budget",
    "evaluator_error", "sandbox_error", "tradeoff", "gate", "raced",
]
OUTCOME_REASONS: Final[tuple[str, ...]] = get_args(OutcomeReason)
# Reasons of a working proposal that lost (not a failure to produce an evaluable child).
# tradeoff: better on one objective, worse on another; gate: broke a constraint; raced: stopped during validation,
# confidently below its parent and best nowhere.
LOST_REASONS: Final = frozenset({"worse", "tie", "duplicate", "tradeoff", "gate", "raced"})
MERGE_KIND: Final = "merge"  # the kind of proposal (and commit) a merge makes
SEED_KIND: Final = "seed"

# -- why a run stopped -------------------------------------------------------------------------------------
# budget: evaluator calls, USD, time or iterations ran out; target: the target score was reached; patience: no
# improvement for too long; stop_file: the stop file appeared; llm_failure: the LLM cannot be used as configured
# (unreachable, bad key, unknown model, or failing call after call); error: an unexpected error; interrupted:
# Ctrl-C or SIGTERM.
StopKind = Literal["budget", "target", "patience", "stop_file", "llm_failure", "nothing_new", "error", "interrupted"]
STOP_KINDS: Final[tuple[str, ...]] = get_args(StopKind)
# Stops that need the user to fix something before `resume` can help: `evolver run` exits 1 after them.
FAILED_STOPS: Final = frozenset({"llm_failure"})

# -- what went wrong with an LLM call ----------------------------------------------------------------------
# unreachable: nothing answered at the address (connection refused, unknown host); timeout: no reply in time;
# transient: rate limit or server error; auth: key rejected; not_found: unknown model or path; rejected: the
# request was refused (bad parameters, prompt too long); no_key: no key configured; no_time: the run's time
# budget left no time for a (further) attempt; interrupted: Ctrl-C during the call.
LLMErrorKind = Literal["unreachable", "timeout", "transient", "auth", "not_found", "rejected", "no_key", "no_time",
                       "interrupted"]
LLM_ERROR_KINDS: Final[tuple[str, ...]] = get_args(LLMErrorKind)
# Failures no retry and no other prompt can fix: the run stops at the first one rather than spend evaluator
# calls on minibatches whose proposals cannot be made.
RUN_STOPPING_LLM_ERRORS: Final = frozenset({"unreachable", "auth", "not_found", "no_key"})

# -- defaults ---------------------------------------------------------------------------------------------
DEFAULT_PROPOSER: Final = "reflective"  # an LLM; `builtin` is the LLM-free one
BUILTIN_MODEL: Final = "builtin"  # --model builtin: the LLM-free proposer and score-based merge resolution


class Defaults:
    """Every default a user can change, in one place (task.toml, flags and keywords fall back to these)."""

    # [task]
    seed: Final = "seed"
    mutable: Final = ("**/*.py",)
    objective: Final = ""
    background: Final = ""
    # [evaluate]
    kind: Final = "python"
    evaluator: Final = "evaluate.py"
    tests: Final = "tests"
    instances_file: Final = "instances.toml"
    timeout_s: Final = 60.0
    profile: Final = False
    repeats: Final = 1
    private: Final = ()
    # [evolve] and `evolver run`
    frontier: Final = "instance"
    minibatch: Final = 3
    accept: Final = None  # None: pareto when the task optimizes several objectives, else strict
    race: Final = True  # validate accepted children in stages, stopping the ones that cannot matter
    race_confidence: Final = 0.95  # how sure a stop must be that the child is below its parent
    race_first_stage: Final = 5  # validation instances of the first stage (at least)
    merge: Final = True
    max_merges: Final = 5
    merge_subsample: Final = 5  # validation instances a merged candidate is first judged on
    tried_shown: Final = 8  # rejected attempts from the same parent shown to the proposer
    workers: Final = 1  # iterations in flight at once
    seed_rng: Final = 0
    # [sandbox]
    backend: Final = "auto"
    memory_mb: Final = 1024
    cpus: Final = 1.0
    max_processes: Final = 64
    output_limit_mb: Final = 64
    sandbox_workers: Final = 0  # 0: min(cores, 4)
    isolation: Final = "pool"
    recycle_after: Final = 50
    # the LLM
    temperature: Final = 0.7
    max_tokens: Final = 4096
    repair_turns: Final = 2
    llm_timeout_s: Final = 120.0
    llm_max_retries: Final = 4
    llm_backoff_base_s: Final = 1.0
    llm_backoff_cap_s: Final = 30.0
    llm_concurrency: Final = 4
    # the command line
    runs_dir: Final = "runs"  # run directories default to runs/<task name>
    eval_split: Final = ALL_SPLITS
    candidate: Final = "best"  # what `evolver export` exports
    bench_marker: Final = "bench"  # `evolver init --pytest`: test ids containing it are the benchmarks
    # stopping
    failing_streak_warning: Final = 5  # proposals in a row without an evaluable child: say so
    llm_error_streak_stop: Final = 3  # LLM failures in a row (after retries): stop the run
    sandbox_error_streak_stop: Final = 3  # evaluations in a row the sandbox itself failed: stop the run
    nothing_new_stop: Final = 30  # proposals in a row that changed nothing or repeated a candidate: stop the run


def one_of(values: tuple[str, ...]) -> str:
    """'"a", "b" or "c"': how an error message names the allowed values."""
    quoted = [f'"{v}"' for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
