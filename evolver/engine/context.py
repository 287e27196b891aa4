"""What a proposer is shown for a plan, as records: parents with their files and results, the evidence, the
relevant lessons, and the attempts already rejected from the same parent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..config import MERGE_KIND
from ..evaluation import InstanceResult
from ..evidence import gather
from ..lessons import Lesson, LessonLog, relevant
from ..proposers.base import ParentInfo, ProposalContext, TriedAttempt
from ..repo import RunRepo
from ..run_state import Standings
from ..store import ProposalRow, Store
from ..task import Task
from .merge_schedule import ancestors
from .plans import Plan, moved_instances

HISTORY_SHOWN = 6  # a merge parent's accepted changes since the base


def lesson_of(p: ProposalRow, task: str, outcome: str, reason: str, delta: float | None) -> Lesson:
    """The lesson a proposal's outcome teaches (also how a merge shows a parent's history)."""
    return Lesson(task=task, run=p.run, iteration=p.iteration, parent=p.parent_sha, child=p.child_sha,
                  files=tuple(p.files), failure_kinds=tuple(p.failure_kinds), diagnosis=p.diagnosis,
                  change=p.change, outcome=outcome, reason=reason, delta=delta,
                  kind=MERGE_KIND if p.kind == MERGE_KIND else "mutation", proposer=p.proposer, operator=p.operator)


def mutable_texts(task: Task, files: Mapping[str, bytes]) -> dict[str, str]:
    """The mutable files a proposer may edit as text: those that decode as UTF-8 (others are data to it)."""
    out = {}
    for path, data in files.items():
        if task.is_mutable(path):
            try:
                out[path] = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


@dataclass
class ContextBuilder:
    task: Task
    run: str
    repo: RunRepo
    store: Store
    lessons: LessonLog
    standings: Standings
    label: Callable[[str], str]
    parents: Mapping[str, tuple[str, ...]]
    tried_shown: int

    def _parent(self, sha: str, results: Sequence[InstanceResult] = (), wins: tuple[str, ...] = (),
                history: tuple[Lesson, ...] = ()) -> ParentInfo:
        files = self.repo.read_files(sha)
        return ParentInfo(sha=sha, label=self.label(sha), files=files, texts=mutable_texts(self.task, files),
                          results=tuple(results),
                          val=self.standings.scores(sha) if sha in self.standings else None, wins=wins,
                          history=history)

    def _tried(self, parent: str) -> tuple[TriedAttempt, ...]:
        rows = [p for p in self.store.proposals(self.run, parent_sha=parent)
                if p.status in ("rejected", "failed") and p.kind != MERGE_KIND]
        return tuple(TriedAttempt(p.proposer, p.operator, p.change, p.reason, p.detail)
                     for p in rows[-self.tried_shown:])

    def mutation(self, plan: Plan, parent_results: Sequence[InstanceResult], it: int) -> ProposalContext:
        parent = self._parent(plan.parents[0], parent_results)
        kinds = {r.status for r in parent_results if not r.ok}
        return ProposalContext(
            task=self.task, parents=(parent,), evidence=gather(parent_results),
            lessons=relevant(self.lessons.load(self.task.name), parent.texts, kinds),
            tried=self._tried(parent.sha), iteration=it)

    def _history(self, sha: str, base: str) -> tuple[Lesson, ...]:
        """The accepted changes on `sha`'s line since `base`, newest first."""
        since_base = ancestors(base, self.parents) | {base}
        lineage = [s for s in [sha, *ancestors(sha, self.parents)] if s not in since_base]
        out = []
        for s in lineage:
            for p in self.store.proposals(self.run, child_sha=s):
                if p.diagnosis or p.change:
                    out.append(lesson_of(p, self.task.name, p.status, p.reason, None))
        return tuple(out[:HISTORY_SHOWN])

    def merge(self, plan: Plan, it: int) -> ProposalContext:
        (a, b), base = plan.parents, plan.base
        assert base is not None
        wins = plan.wins or ((), ())
        pa = self._parent(a, wins=wins[0], history=self._history(a, base))
        pb = self._parent(b, wins=wins[1], history=self._history(b, base))
        pbase = self._parent(base)
        changed = sorted({p for side in (pa, pb) for p, d in side.files.items() if pbase.files.get(p) != d})
        return ProposalContext(
            task=self.task, parents=(pa, pb), evidence=gather(()),
            lessons=relevant(self.lessons.load(self.task.name), changed, ()), iteration=it, base=pbase,
            moved=moved_instances(self.standings, a, b, base))
