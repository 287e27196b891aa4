"""The Proposer protocol and the records a proposer reads and returns.

A proposer gets a `ProposalContext`: the task, one parent (a mutation) or two with their merge base (a merge),
each with its files and results as records, the side information of the parent's minibatch as an `Evidence`
record, the relevant lessons and the attempts already rejected from this parent, all as records. It returns a
`Proposal`: the changed files on top of the first parent, with its reasoning, or a failure. The engine does the
rest the same way for every proposer: validation (mutable files, syntax, duplicates), commit, evaluation,
acceptance, records. Text is rendered from these records only where an LLM reads it (proposers/prompts.py).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..evaluation import InstanceResult
from ..evidence import Evidence
from ..frontier import CandidateScores
from ..lessons import Lesson
from ..task import Task


@dataclass(frozen=True)
class ParentInfo:
    """One parent as a proposer sees it."""

    sha: str
    label: str  # seed, c3, ...
    files: Mapping[str, bytes]  # every file of the candidate, path -> bytes
    texts: Mapping[str, str]  # the mutable files that decode as UTF-8, path -> text
    results: tuple[InstanceResult, ...] = ()  # on this proposal's instances (minibatch or merge subsample)
    val: CandidateScores | None = None  # its validation standing (accepted candidates)
    wins: tuple[str, ...] = ()  # merges: validation instances where it beats the other parent
    history: tuple[Lesson, ...] = ()  # merges: what was proposed and accepted on its line since the base


@dataclass(frozen=True)
class TriedAttempt:
    """A proposal already made from the same parent that did not get in."""

    proposer: str
    operator: str
    change: str
    reason: str  # worse, crashed, noop, patch_failed, ...
    detail: str = ""
    results: tuple[tuple[str, float | None, float | None], ...] = ()  # (instance, parent score, child score)


@dataclass(frozen=True)
class Standing:
    """Where a parent stands among the accepted candidates, on the validation split."""

    score: float | None  # its mean validation score
    rank: int  # 1 = the best
    of: int  # accepted candidates
    best_label: str
    best_score: float | None
    wins: tuple[str, ...] = ()  # instances where it is (tied) best
    behind: tuple[tuple[str, float, float], ...] = ()  # (instance, its score, the best score), widest gap first


@dataclass(frozen=True)
class ProposalContext:
    task: Task
    parents: tuple[ParentInfo, ...]  # one (mutation) or two (merge: the better one first)
    evidence: Evidence  # the first parent's results condensed (candidate output: untrusted)
    lessons: tuple[Lesson, ...] = ()  # the most relevant first
    tried: tuple[TriedAttempt, ...] = ()
    iteration: int = 0
    base: ParentInfo | None = None  # merges: the merge base of the two parents
    moved: tuple[str, ...] = ()  # merges: validation instances where either parent differs from the base
    standing: Standing | None = None  # the (first) parent's place among the accepted candidates

    @property
    def parent(self) -> ParentInfo:
        return self.parents[0]

    @property
    def parent_files(self) -> Mapping[str, str]:
        return self.parent.texts

    @property
    def results(self) -> tuple[InstanceResult, ...]:
        return self.parent.results


@dataclass(frozen=True)
class MergeRecord:
    """How a merge was made: conflicts, how they were resolved, which parent gave each hunk."""

    conflicts: int = 0
    resolution: str = "clean"  # clean | llm | builtin | failed
    contributions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Proposal:
    """A patch (changes on top of the first parent) with its reasoning, or a failure (`failure` says which kind,
    `detail` why)."""

    changes: Mapping[str, str | bytes | None] = field(default_factory=dict)
    diagnosis: str = ""
    change: str = ""
    operator: str = ""  # the proposer's own label for the kind of change (the builtin's mutation kinds)
    failure: str | None = None  # patch_failed | noop | syntax | truncated | llm_error | not_mutable ...
    detail: str = ""
    merge: MergeRecord | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.changes)


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal: ...


@dataclass(frozen=True)
class ProposerSettings:
    """What a proposer factory (registered under `evolver.proposers`) gets to build its proposer."""

    model: str
    llm: Any = None  # an evolver.llm.LLM, or None with the builtin model
    repair_turns: int = 2
    prompts: Any = None  # evolver.proposers.prompts.Prompts: the templates in force
