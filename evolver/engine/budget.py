"""Budgets and stopping rules of a run, checked before every evaluation batch.

Pure data: the loop keeps a `Usage` up to date and asks `stop_reason` before each batch (with the size of
the batch it is about to run), so a run never overshoots its evaluator-call budget. Why a run stopped is a
`StopReason` record: a kind that code can branch on (config.STOP_KINDS) and a message for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import StopKind


@dataclass(frozen=True)
class Budget:
    max_evals: int | None = None  # evaluator calls (instances actually run, cache hits are free)
    max_usd: float | None = None
    max_seconds: float | None = None
    max_iterations: int | None = None
    target_score: float | None = None  # stop when the best validation score reaches it
    patience: int | None = None  # stop after this many iterations without a better validation score
    stop_file: str | None = None  # stop when this file exists

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> Budget:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StopReason:
    kind: StopKind  # budget | target | patience | stop_file | llm_failure | error | interrupted
    message: str  # for people: which limit and how much of it was used, or what failed and what to do


@dataclass(frozen=True)
class Usage:
    evals: int = 0
    usd: float = 0.0
    seconds: float = 0.0
    iterations: int = 0
    best_score: float | None = None
    since_improvement: int = 0


def evals_exhausted(budget: Budget, usage: Usage, next_evals: int, promised: int = 0) -> str | None:
    """Checked before every evaluation batch: the evaluator-call budget is never overshot (`promised`: calls
    already reserved for batches in flight or held for a child about to be evaluated)."""
    if budget.max_evals is not None and next_evals and usage.evals + promised + next_evals > budget.max_evals:
        held = f" (and {promised} held for evaluations under way)" if promised else ""
        return (f"evaluator-call budget: {usage.evals} used{held} of {budget.max_evals}, the next batch needs "
                f"{next_evals}")
    return None


def stop_reason(budget: Budget, usage: Usage) -> StopReason | None:
    """Checked between iterations: why the run must stop now, or None to go on."""
    if budget.stop_file and Path(budget.stop_file).exists():
        return StopReason("stop_file", f"stop file {budget.stop_file} exists")
    if budget.max_evals is not None and usage.evals >= budget.max_evals:
        return StopReason("budget", f"evaluator-call budget: {usage.evals} used of {budget.max_evals}")
    if budget.max_usd is not None and usage.usd >= budget.max_usd:
        return StopReason("budget", f"USD budget: {usage.usd:.4f} used of {budget.max_usd:g}")
    if budget.max_seconds is not None and usage.seconds >= budget.max_seconds:
        return StopReason("budget", f"time budget: {usage.seconds:.0f} s of {budget.max_seconds:g} s")
    if budget.max_iterations is not None and usage.iterations >= budget.max_iterations:
        return StopReason("budget", f"iteration budget: {usage.iterations} of {budget.max_iterations}")
    if budget.target_score is not None and usage.best_score is not None and usage.best_score >= budget.target_score:
        return StopReason("target", f"target score reached: {usage.best_score:.4g} >= {budget.target_score:g}")
    if budget.patience is not None and usage.since_improvement >= budget.patience:
        return StopReason("patience", f"no improvement for {usage.since_improvement} iterations "
                                      f"(patience {budget.patience})")
    return None


# A run should be able to validate at least this many accepted children, or it can hardly improve on the seed.
PLANNED_ACCEPTS = 5


def planned_evals(val: int, minibatch: int, repeats: int) -> int:
    """Evaluator calls that validate the seed and PLANNED_ACCEPTS accepted children, with their iterations."""
    return val * repeats + PLANNED_ACCEPTS * (val * repeats + 2 * minibatch * repeats)


def budget_advice(budget: Budget, val: int, minibatch: int, repeats: int, used: int) -> str | None:
    """At start: when the evaluator-call budget cannot pay for validating PLANNED_ACCEPTS accepted children, say
    what one costs and what budget would; None when it can (or there is no call budget)."""
    if budget.max_evals is None:
        return None
    per_iteration = 2 * minibatch * repeats  # the parent's minibatch (often cached) and the child's
    per_accept = val * repeats  # an accepted child is validated on the whole validation split
    needed = used + planned_evals(val, minibatch, repeats)
    if budget.max_evals >= needed:
        return None
    affordable = max(0, (budget.max_evals - used - val * repeats) // max(1, per_accept + per_iteration))
    return (f"budget plan: --budget-evals {budget.max_evals} pays for about {affordable} accepted children: each "
            f"costs {per_accept} calls to validate ({val} validation instances x {repeats} repeats) besides "
            f"{per_iteration} per iteration; --budget-evals {needed} or more lets at least {PLANNED_ACCEPTS} "
            "be validated (or use a smaller validation split)")
