"""The engine's settings and what it reports: records the loop, the drivers and the views share."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..config import Defaults
from .budget import Usage

# The proposal the current thread is asking its proposer for (None outside a proposal). Set by the engine around
# `propose`, so whatever records an LLM call made in that thread (with --workers N, each worker thread sets its
# own) links the call to its proposal without the proposers passing ids around.
current_proposal: ContextVar[int | None] = ContextVar("evolver_current_proposal", default=None)


@dataclass(frozen=True)
class LoopConfig:
    minibatch: int = Defaults.minibatch
    accept: str | None = Defaults.accept  # strict | ties | pareto; None: the task's (evolver.objectives)
    frontier: str = Defaults.frontier
    seed: int = Defaults.seed_rng
    workers: int = Defaults.workers  # iterations in flight at once (proposals and their evaluations)
    tried_shown: int = Defaults.tried_shown
    merge: bool = Defaults.merge  # merge two frontier candidates now and then (GEPA's schedule)
    max_merges: int = Defaults.max_merges  # merge attempts over the run
    merge_subsample: int = Defaults.merge_subsample  # validation instances a merged candidate is first judged on
    race: bool | None = None  # validate in stages (engine.racing); None: the task's [evolve] race
    race_confidence: float | None = None  # None: the task's [evolve] race_confidence

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Event:
    """What the live view shows after each step."""

    kind: str  # iteration | warning | stopped
    iteration: int
    message: str
    usage: Usage
    frontier_size: int = 0
    best: dict[str, float | None] | None = None


