"""What a proposer is shown for a plan, as records: parents with their files and results, the evidence, the
relevant lessons, and the attempts already rejected from the same parent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import MERGE_KIND
from ..evaluation import InstanceResult
from ..evidence import gather
from ..lessons import Lesson, LessonLog, relevant
from ..proposers.base import ParentInfo, ProposalContext, Standing, TriedAttempt
from ..repo import RunRepo
from ..run_state import Standings, stored_scores
from ..store import ProposalRow, Store
from ..task import Task, mutable_texts
from .merge_schedule import ancestors
from .plans import Plan, moved_instances

HISTORY_SHOWN = 6  # a merge parent's accepted changes since the base
# Outcomes that say nothing about the change itself (it was never judged): not shown as "already tried".
NOT_TRIED = frozenset({"interrupted", "budget", "llm_error", "evaluator_error", "sandbox_error"})


DIFF_CHARS = 500  # a lesson's change as a diff: enough to see what was written, not a whole file


def lesson_of(p: ProposalRow, task: str, outcome: str, reason: str, delta: float | None, **more: Any) -> Lesson:
    """The lesson a proposal's outcome teaches (also how a merge shows a parent's history)."""
    return Lesson(task=task, run=p.run, iteration=p.iteration, parent=p.parent_sha, child=p.child_sha,
                  files=tuple(p.files), failure_kinds=tuple(p.failure_kinds), diagnosis=p.diagnosis,
                  change=p.change, outcome=outcome, reason=reason, delta=delta,
                  kind=MERGE_KIND if p.kind == MERGE_KIND else "mutation", proposer=p.proposer, operator=p.operator,
                  proposal_id=p.id, **more)


def short_diff(diff: str, limit: int = DIFF_CHARS) -> str:
    """The changed lines of a unified diff, each file named once, within `limit` characters."""
    out: list[str] = []
    for line in diff.splitlines():
        if line.startswith("+++ "):
            out.append(line[4:].removeprefix("b/") + ":")
        elif line[:1] in "+-" and not line.startswith("--- "):
            out.append(line)
    text = "\n".join(out)
    return text if len(text) <= limit else text[: limit - 4] + "\n..."


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
    eval_key: str  # the evaluator's: per-instance results of earlier attempts come from its stored results

    def _parent(self, sha: str, results: Sequence[InstanceResult] = (), wins: tuple[str, ...] = (),
                history: tuple[Lesson, ...] = ()) -> ParentInfo:
        files = self.repo.read_files(sha)
        return ParentInfo(sha=sha, label=self.label(sha), files=files, texts=mutable_texts(self.task, files),
                          results=tuple(results),
                          val=self.standings.scores(sha) if sha in self.standings else None, wins=wins,
                          history=history)

    def _scores(self, sha: str | None, ids: Sequence[str]) -> dict[str, float]:
        if sha is None:
            return {}
        cand = self.store.candidate(sha)  # its tree without a git call
        return stored_scores(self.store, self.eval_key, cand.tree if cand else self.repo.tree_sha(sha), ids)

    def _tried(self, parent: str) -> tuple[TriedAttempt, ...]:
        rows = [p for p in self.store.proposals(self.run, parent_sha=parent) if p.status in ("rejected", "failed")
                and p.kind != MERGE_KIND and p.reason not in NOT_TRIED][-self.tried_shown:]
        out = []
        for p in rows:
            before, after = self._scores(parent, p.minibatch), self._scores(p.child_sha, p.minibatch)
            results = tuple((i, before.get(i), after.get(i)) for i in p.minibatch) if after else ()
            out.append(TriedAttempt(p.proposer, p.operator, p.change, p.reason, p.detail, results))
        return tuple(out)

    def standing(self, sha: str) -> Standing | None:
        """Where `sha` stands among the accepted candidates (None before it is validated)."""
        st = self.standings
        if sha not in st:
            return None
        best = st.best()
        ranked = sorted(st.candidates(), key=st.mean_score, reverse=True)
        mine, top = st.scores(sha).per_instance, {i: max((st.scores(c).per_instance.get(i) or 0.0)
                                                         for c in ranked) for i in st.val_ids}
        wins = tuple(i for i, who in st.frontier().best_on.items() if sha in who)
        behind = sorted(((i, mine.get(i) or 0.0, top[i]) for i in st.val_ids if (mine.get(i) or 0.0) < top[i]),
                        key=lambda x: x[1] - x[2])
        return Standing(score=st.mean_score(sha), rank=ranked.index(sha) + 1, of=len(ranked),
                        best_label=self.label(best) if best else "-", best_score=st.mean_score(best) if best else None,
                        wins=wins, behind=tuple(behind))

    def untaught(self) -> list[Lesson]:
        """The lessons of proposals with an outcome but no line in the log (a kill between the two); none for a
        run whose log predates proposal ids in lessons."""
        ours = [x for x in self.lessons.load(self.task.name) if x.run == self.run]
        if any(x.proposal_id is None for x in ours):
            return []
        taught = {x.proposal_id for x in ours}
        return [self.lesson(p, p.status, p.reason, None) for p in self.store.proposals(self.run)
                if p.status in ("accepted", "rejected", "failed") and p.id not in taught]

    def lesson(self, p: ProposalRow, outcome: str, reason: str, delta: float | None) -> Lesson:
        """The lesson of a proposal, with what it did per instance and the change as a short diff."""
        deltas: dict[str, float] = {}
        diff = ""
        if p.child_sha:
            before, after = self._scores(p.parent_sha, p.minibatch), self._scores(p.child_sha, p.minibatch)
            deltas = {i: round(after[i] - before[i], 6) for i in p.minibatch if i in after and i in before}
            diff = short_diff(self.repo.diff(p.parent_sha, p.child_sha).decode("utf-8", errors="replace"))
        return lesson_of(p, self.task.name, outcome, reason, delta, candidate=self.label(p.child_sha)
                         if p.child_sha else "", parent_label=self.label(p.parent_sha),
                         judged_on="subsample" if p.kind == MERGE_KIND else "minibatch", deltas=deltas, diff=diff)

    def mutation(self, plan: Plan, parent_results: Sequence[InstanceResult], it: int) -> ProposalContext:
        parent = self._parent(plan.parents[0], parent_results)
        kinds = {r.status for r in parent_results if not r.ok}
        return ProposalContext(
            task=self.task, parents=(parent,), evidence=gather(parent_results),
            lessons=relevant(self.lessons.load(self.task.name), parent.texts, kinds),
            tried=self._tried(parent.sha), iteration=it, standing=self.standing(parent.sha))

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
