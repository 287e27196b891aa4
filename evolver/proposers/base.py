"""The Proposer protocol and its records."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..evaluation import InstanceResult
from ..task import Task


@dataclass(frozen=True)
class ProposalContext:
    """Everything a proposer may use: the task, the parent's files, and what its minibatch showed."""

    task: Task
    parent_sha: str
    parent_files: Mapping[str, str]  # the mutable files of the parent, path -> text
    results: Sequence[InstanceResult]  # the parent on the minibatch
    evidence: str  # condensed side information of `results` (candidate output: untrusted)
    lessons: str  # relevant lessons, one per line
    tried: Sequence[str]  # what was already proposed from this parent and rejected, one line each
    iteration: int = 0


@dataclass(frozen=True)
class Proposal:
    """A patch (changes) with its reasoning, or a failure (`failure` says which kind, `detail` why)."""

    changes: Mapping[str, str | None] = field(default_factory=dict)
    diagnosis: str = ""
    change: str = ""
    failure: str | None = None  # patch_failed | noop | syntax | truncated | llm_error | not_mutable ...
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.changes)


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal: ...
