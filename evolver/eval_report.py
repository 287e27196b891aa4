"""Evaluate one candidate of a task outside an evolution run: what `evolver eval` and `evolver.evaluate()` do.

The candidate is the task's seed folder, a ref of the run repository, or a commit of another repository; the
results go to the run's store (the cache every later evaluation of the same tree reuses).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ALL_SPLITS, EVAL_SPLITS, PRIMARY_OBJECTIVE, SEED_KIND, SPLITS, Defaults, one_of
from .errors import UserInputError
from .evaluation import CandidateRef, Evaluator, InstanceResult, instances_for
from .repo import RunRepo, seed_branch
from .sandbox import task_sandbox
from .store import Store, check_run_dir
from .task import Task, load_task, not_utf8, not_utf8_note


@dataclass(frozen=True)
class EvalReport:
    task: str
    run_dir: str
    ref: str
    sha: str
    tree: str
    backend: str
    isolation: dict[str, Any]
    trusted_scores: bool
    objectives: dict[str, str]
    results: tuple[InstanceResult, ...]
    wall_s: float
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per split: instances, failures, mean score and mean of each objective over ok instances."""
        out: dict[str, dict[str, Any]] = {}
        for split in (*SPLITS, None):
            rs = [r for r in self.results if r.split == split]
            if not rs:
                continue
            ok = [r for r in rs if r.ok]
            means: dict[str, float | None] = {}
            for name in self.objectives:
                if name == PRIMARY_OBJECTIVE:
                    continue
                vals = [r.objectives.get(name) for r in ok if r.objectives.get(name) is not None]
                means[name] = sum(vals) / len(vals) if vals else None  # type: ignore[arg-type]
            out[split or "-"] = {
                "instances": len(rs), "failed": len(rs) - len(ok),
                "mean_score": sum(r.score for r in rs) / len(rs), "mean_objectives_ok": means,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "run_dir": self.run_dir, "ref": self.ref, "sha": self.sha, "tree": self.tree,
            "backend": self.backend, "isolation": self.isolation, "trusted_scores": self.trusted_scores,
            "objectives": self.objectives, "summary": self.summary(), "wall_s": round(self.wall_s, 3),
            "notes": list(self.notes), "results": [r.to_json() for r in self.results],
        }


def _candidate_from_seed(task: Task, repo: RunRepo, run: str, notes: list[str]) -> tuple[str, str]:
    sha = repo.commit_folder(task.seed_dir, f"seed of {task.name}", kind=SEED_KIND, run=run)
    branch = seed_branch(run)
    current = repo.branch_sha(branch)
    if current is None:
        repo.set_branch(branch, sha)
        return branch, sha
    if repo.tree_sha(current) == repo.tree_sha(sha):
        return branch, current
    # The seed folder changed since the run began: evaluate it as it is now, keep the old seed reachable.
    repo.keep_ref(f"{run}/previous-seeds/{current[:12]}", current)
    repo.set_branch(branch, sha)
    notes.append(f"the seed folder changed since {branch} was made; {branch} now points at the new seed "
                 f"(the old one is kept as refs/evolver/{run}/previous-seeds/{current[:12]})")
    return branch, sha


def evaluate(
    task_path: str | Path,
    ref: str | None = None,
    *,
    split: str = Defaults.eval_split,
    instances: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    repo_path: str | Path | None = None,
    use_cache: bool = True,
    backend: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Evaluate the task's seed (or `ref` of the run repository, or of `repo_path`) on a split."""
    started = time.monotonic()
    task = load_task(task_path)
    if split not in EVAL_SPLITS:
        raise UserInputError(f"--split: expected {one_of(EVAL_SPLITS)}, found {split!r}")
    run_path = Path(run_dir) if run_dir is not None else Path(Defaults.runs_dir) / task.name
    run = run_path.resolve().name
    notes: list[str] = []
    check_run_dir(run_path)  # before the sandbox starts: a file there is bad input, nothing is written
    sandbox = task_sandbox(task, backend)
    try:
        store = Store(run_path / "run.db")
    except BaseException:
        sandbox.close()
        raise
    try:
        store.record_task(task.digest, task.name, str(task.root), {"objectives": task.objectives,
                                                                  "kind": task.kind})
        ref_name, candidate, holder = _candidate(task, RunRepo.open_or_init(run_path / "repo"), store, run, ref,
                                                 repo_path, notes)
        if found := not_utf8(task, holder.read_files(candidate.sha)):
            notes.append(not_utf8_note(found))
        evaluator = Evaluator(task, sandbox, store, workers=workers)
        collected = evaluator.collect_tests(candidate) if task.instances is None else None
        pairs = instances_for(task, split, collected)
        if instances:
            known = {i: s for i, s in instances_for(task, ALL_SPLITS, collected)}
            unknown = [i for i in instances if i not in known]
            if unknown:
                raise UserInputError(f"--instances: expected ids of the task's instances, found unknown "
                                     f"{', '.join(unknown[:5])}")
            pairs = [(i, known[i]) for i in instances]
        if not pairs:
            raise UserInputError(f"--split {split}: expected instances in that split, found none")
        results = evaluator.evaluate(candidate, pairs, use_cache=use_cache, on_progress=on_progress)
        isolation = sandbox.describe()
    finally:
        store.close()
        sandbox.close()
    return EvalReport(
        task=task.name, run_dir=str(run_path), ref=ref_name, sha=candidate.sha, tree=candidate.tree,
        backend=sandbox.name,
        isolation=isolation, trusted_scores=task.trusted_scores, objectives=dict(task.objectives),
        results=tuple(results), wall_s=time.monotonic() - started, notes=tuple(notes))


def _candidate(task: Task, repo: RunRepo, store: Store, run: str, ref: str | None, repo_path: str | Path | None,
               notes: list[str]) -> tuple[str, CandidateRef, RunRepo]:
    """(the name it was asked by, the candidate, the repository holding it): `ref` of `repo_path`, `ref` of the
    run repository, or the seed."""
    if repo_path is not None:
        source = RunRepo.open_existing(repo_path)
        ref_name = ref or "HEAD"
        sha = source.resolve(ref_name)
        return ref_name, CandidateRef(sha=sha, tree=source.tree_sha(sha), archive=lambda: source.archive(sha)), source
    if ref is not None:
        sha = repo.resolve(ref)
        return ref, CandidateRef(sha=sha, tree=repo.tree_sha(sha), archive=lambda: repo.archive(sha)), repo
    ref_name, sha = _candidate_from_seed(task, repo, run, notes)
    tree = repo.tree_sha(sha)
    store.record_candidate(run, sha, tree, ref_name, (), SEED_KIND)
    return ref_name, CandidateRef(sha=sha, tree=tree, archive=lambda: repo.archive(sha)), repo


