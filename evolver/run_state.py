"""The one reader of a run's state: standings, frontier, best candidate, outcomes and totals.

`Standings` turns the accepted candidates' validation results into the frontier and the best candidate. The
engine fills one as it accepts candidates; `read_state` fills one from the store, with the results the engine
stored under its own evaluator's key (recorded in the run's settings) and folded over repeats by the same
`aggregate` (medians) the evaluator uses. `evolver status`, `show`, `export`, `optimize()`'s result and any
report read a run through `read_state`; nothing else recomputes the frontier or the best candidate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MERGE_KIND, PRIMARY_OBJECTIVE
from .errors import UserInputError
from .evaluation import InstanceResult, aggregate, cache_key, instances_for
from .frontier import CandidateScores, Frontier, build_frontier, rank_key, scores_from_results
from .objectives import Objective, gate_failures
from .repo import RunRepo, seed_branch
from .run_lock import held
from .store import MergeRow, ProposalRow, RunRow, Store
from .task import Task, load_task


def validation_ids(task: Task) -> list[str]:
    """The instances candidates are validated on: the val split (generalization); without one, the train split
    itself (multi-task search over a dataset, or single-task search on one problem)."""
    val = [i for i, _ in instances_for(task, "val")]
    return val or [i for i, _ in instances_for(task, "train")]


class Standings:
    """Accepted candidates' validation results -> frontier and best (oldest candidate first)."""

    def __init__(self, val_ids: Sequence[str], objectives: Mapping[str, str], mode: str,
                 optimized: Mapping[str, str] | None = None, gates: Mapping[str, Objective] | None = None) -> None:
        """`objectives`: every objective's direction (all are aggregated and shown); `optimized`: the ones the
        objective frontier and the order of "best" use (default: all); `gates`: the task's objectives, whose
        bounded gates a candidate must keep on every validation instance to be on the frontier or best (unless
        none keeps them all)."""
        self.val_ids, self.objectives, self.mode = list(val_ids), dict(objectives), mode
        self.optimized = dict(optimized) if optimized is not None else self.objectives
        self.gates = dict(gates or {})
        self._breaches: dict[str, tuple[str, ...]] = {}
        self._scores: dict[str, CandidateScores] = {}
        self._results: dict[str, tuple[InstanceResult, ...]] = {}
        self._order: dict[str, int] = {}
        self._frontier: Frontier | None = None
        self._best: str | None = None  # computed with the frontier

    def add(self, sha: str, results: Sequence[InstanceResult], order: int) -> CandidateScores:
        """`order` places the candidate among the others (its proposal's id; the seed 0): ties on the frontier and
        for the best go to the earlier, whatever order candidates were accepted in (workers finish out of
        order) or loaded in."""
        scores = scores_from_results(sha, results, self.objectives)
        self._breaches[sha] = tuple(gate_failures(results, self.gates)) if self.gates else ()
        late = bool(self._order) and order < max(self._order.values())  # a worker that finished out of order
        self._scores[sha], self._results[sha], self._order[sha] = scores, tuple(results), order
        if late:
            self._scores = dict(sorted(self._scores.items(), key=lambda kv: self._order[kv[0]]))
        self._frontier = None
        return scores

    def __contains__(self, sha: object) -> bool:
        return sha in self._scores

    def __len__(self) -> int:
        return len(self._scores)

    def candidates(self) -> list[str]:
        return list(self._scores)

    def scores(self, sha: str) -> CandidateScores:
        return self._scores[sha]

    def results(self, sha: str) -> tuple[InstanceResult, ...]:
        return self._results[sha]

    def mean_score(self, sha: str) -> float:
        return self._scores[sha].objectives.get(PRIMARY_OBJECTIVE) or 0.0

    def sum_on(self, sha: str, ids: Sequence[str]) -> float:
        per = self._scores[sha].per_instance
        return sum(per.get(i) or 0.0 for i in ids)

    def breaches(self, sha: str) -> tuple[str, ...]:
        """The bounded gates the candidate breaks on validation instances (one line each)."""
        return self._breaches.get(sha, ())

    def _eligible(self) -> list[CandidateScores]:
        """Candidates that keep every bounded gate on every validation instance (all, when none does)."""
        keeping = [c for s, c in self._scores.items() if not self._breaches.get(s)]
        return keeping or list(self._scores.values())

    def frontier(self) -> Frontier:
        # Rebuilt only when a candidate joins: selection, the live view and `best` reuse it.
        if self._frontier is None:
            eligible = self._eligible()
            self._frontier = build_frontier(eligible, self.val_ids, self.optimized, self.mode)
            self._best = max(eligible, key=lambda c: rank_key(c.objectives, self.optimized)).candidate \
                if eligible else None
        return self._frontier

    def best(self) -> str | None:
        self.frontier()
        return self._best

    def best_objectives(self) -> dict[str, float | None] | None:
        b = self.best()
        return dict(self._scores[b].objectives) if b else None

    def improves_on(self, sha: str, before: Mapping[str, float | None] | None) -> bool:
        """Whether `sha` ranks above the objectives `before` (the best before it joined)."""
        return not before or rank_key(self._scores[sha].objectives, self.optimized) > rank_key(
            before, self.optimized)

    def best_per_instance(self) -> dict[str, tuple[str, ...]]:
        """Instance -> the candidates tied for its best score (multi-task search: the best candidate per task)."""
        order = {s: k for k, s in enumerate(self._scores)}
        return {i: tuple(sorted(c, key=order.__getitem__)) for i, c in self.frontier().best_on.items()}


@dataclass(frozen=True)
class RunState:
    """Everything the views of a run show, computed once from the store and the repository."""

    name: str
    path: Path
    run: RunRow
    state: str  # the stored state, except that `running` without a live process holding the run is `interrupted`
    task: Task
    seed: str
    standings: Standings
    labels: Mapping[str, str]  # sha -> seed | c<N>
    branches: Mapping[str, str]  # sha -> branch
    proposals: tuple[ProposalRow, ...]
    merges: tuple[MergeRow, ...]
    llm: Mapping[str, float]
    eval_key: str = ""  # what the run's results are stored under (the engine's evaluator)

    def label(self, sha: str) -> str:
        return self.labels.get(sha, sha[:10])

    def best(self) -> str | None:
        return self.standings.best()

    def outcome_counts(self) -> dict[str, int]:
        return dict(Counter(f"{p.status}:{p.reason}" for p in self.proposals))

    def proposal_of(self, sha: str) -> ProposalRow | None:
        return next((p for p in self.proposals if p.child_sha == sha), None)

    def lineage(self, sha: str) -> list[str]:
        """First-parent history from the seed to `sha`, as shas."""
        parents = {c: p.parents for p in self.proposals if (c := p.child_sha)}
        out = [sha]
        while (ps := parents.get(out[-1])) and ps[0] not in out:
            out.append(ps[0])
        if out[-1] != self.seed:
            out.append(self.seed)
        return list(reversed(out))


def eval_key(run: RunRow, task: Task, store: Store | None = None, seed_tree: str | None = None) -> str:
    """The key the engine stores validation results under: recorded at its start. A run made before it was
    recorded was last evaluated under the key its seed has the most results under (the harness may have changed
    since, which changes the key a new evaluation would use), else under the task's sandbox key."""
    recorded = run.config.get("eval_key")
    if recorded:
        return recorded
    found = store.keys_of(seed_tree) if store is not None and seed_tree is not None else []
    return found[0] if found else cache_key(task)


def accepted_order(seed: str, proposals: Sequence[ProposalRow]) -> list[tuple[str, int]]:
    """The seed, then accepted candidates in the order they were proposed, each with its place (proposal id)."""
    return [(seed, 0)] + [(p.child_sha, p.id) for p in proposals if p.status == "accepted" and p.child_sha]


def load_standings(store: Store, trees: Mapping[str, str], key: str, task: Task, shas: Sequence[tuple[str, int]],
                   mode: str, repeats: int) -> Standings:
    """`trees`: commit -> tree, from the candidate rows (one query, where a git call per candidate would do)."""
    val = validation_ids(task)
    standings = Standings(val, task.objectives, mode, task.optimized, task.objective_specs)
    for sha, order in shas:
        if sha not in trees:
            continue
        rows = store.cached(key, trees[sha], val)
        if not all((i, r) in rows for i in val for r in range(repeats)):
            continue  # not (yet) validated under this evaluator: it has no standing
        standings.add(sha, [aggregate([rows[(i, r)] for r in range(repeats)], cached=True) for i in val], order)
    return standings


def open_run(run_dir: str | Path) -> tuple[Store, RunRepo, RunRow]:
    """The run's store and repository, opened for reading only: a reader never writes (and so works on a
    read-only run directory)."""
    path = Path(run_dir)
    if not (path / "run.db").exists():
        raise UserInputError(f"{path}: expected a run directory (with run.db), found none")
    store = Store(path / "run.db", readonly=True)
    try:
        row = store.run(path.resolve().name)
        if row is None:
            raise UserInputError(f"{path}: expected an evolution run, found only evaluations (evolver eval)")
        return store, RunRepo.open_existing(path / "repo"), row
    except BaseException:
        store.close()
        raise


def read_state(run_dir: str | Path) -> RunState:
    """The state of the run in `run_dir`, from its run.db and repository."""
    path = Path(run_dir)
    store, repo, row = open_run(path)
    try:
        task = load_task(row.task_path)
        seed = repo.branch_sha(seed_branch(row.name))
        if seed is None:
            raise UserInputError(f"{path}: the run has no seed commit yet")
        proposals = tuple(store.proposals(row.name))
        mode = row.config.get("loop", {}).get("frontier", task.evolve.frontier)
        candidates = store.candidates(row.name)
        trees = {c.sha: c.tree for c in candidates}
        trees.setdefault(seed, repo.tree_sha(seed))
        key = eval_key(row, task, store, trees[seed])
        standings = load_standings(store, trees, key, task, accepted_order(seed, proposals), mode, task.repeats)
        labels = {seed: "seed", **{p.child_sha: f"c{p.id}" for p in proposals if p.child_sha}}
        branches = {c.sha: c.branch for c in candidates if c.branch}
        state = "interrupted" if row.state == "running" and not held(path) else row.state
        return RunState(name=row.name, path=path, run=row, state=state, task=task, seed=seed, standings=standings,
                        labels=labels, branches=branches, proposals=proposals,
                        merges=tuple(store.merges(row.name)), llm=store.llm_totals(row.name), eval_key=key)
    finally:
        store.close()


def stored_scores(store: Store, key: str, tree: str, ids: Sequence[str]) -> dict[str, float]:
    """A candidate's stored scores (first repeat) on some instances, under an evaluator key: for showing (a
    proposal's minibatch, what an attempt did per instance), never for deciding anything."""
    return {i: r.score for (i, rep), r in store.cached(key, tree, ids).items() if rep == 0}


def merge_summary(state: RunState) -> dict[str, Any]:
    """Merge attempts: how many, their outcomes, their resolutions, and each attempt's pair."""
    by_id = {p.id: p for p in state.proposals}
    attempts = [{"merge": f"c{m.proposal_id}", "parents": [state.label(m.parent_a), state.label(m.parent_b)],
                 "base": state.label(m.base), "conflicts": m.conflicts, "resolution": m.resolution,
                 "outcome": f"{by_id[m.proposal_id].status}:{by_id[m.proposal_id].reason}"}
                for m in state.merges if m.proposal_id in by_id and by_id[m.proposal_id].kind == MERGE_KIND]
    return {"attempts": len(attempts), "accepted": sum(a["outcome"] == "accepted:accepted" for a in attempts),
            "outcomes": dict(Counter(a["outcome"] for a in attempts)),
            "resolutions": dict(Counter(a["resolution"] for a in attempts)), "pairs": attempts}
