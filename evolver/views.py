"""Read-only views of a run for `evolver status`, `show` and `export`: derived from run.db and the repo."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.frontier import build_frontier, rank_key, scores_from_results
from .errors import UserInputError
from .evaluation import cache_key
from .repo import RunRepo, seed_branch
from .store import ProposalRow, Store
from .task import load_task


@dataclass(frozen=True)
class RunView:
    store: Store
    repo: RunRepo
    name: str
    path: Path

    def close(self) -> None:
        self.store.close()


def open_run(run_dir: str | Path) -> RunView:
    path = Path(run_dir)
    if not (path / "run.db").exists():
        raise UserInputError(f"{path}: expected a run directory (with run.db), found none")
    store = Store(path / "run.db")
    name = path.resolve().name
    if store.run(name) is None:
        store.close()
        raise UserInputError(f"{path}: expected an evolution run, found only evaluations (evolver eval)")
    return RunView(store, RunRepo.open_or_init(path / "repo"), name, path)


def _cache_key(view: RunView) -> tuple[Any, str]:
    row = view.store.run(view.name)
    assert row is not None
    task = load_task(row.task_path)
    return task, cache_key(task)


def _val_scores(view: RunView, sha: str, task, key: str) -> dict[str, Any]:
    val = list(task.instances.val) if task.instances else []
    rows = view.store.cached(key, view.repo.tree_sha(sha), val)
    per = {i: rows[(i, 0)] for i in val if (i, 0) in rows}
    return per


def status(run_dir: str | Path) -> dict[str, Any]:
    view = open_run(run_dir)
    try:
        row = view.store.run(view.name)
        assert row is not None
        task, key = _cache_key(view)
        seed = view.repo.branch_sha(seed_branch(view.name))
        proposals = view.store.proposals(view.name)
        accepted = [seed] + [p.child_sha for p in proposals if p.status == "accepted" and p.child_sha]
        labels = {seed: "seed", **{p.child_sha: f"c{p.id}" for p in proposals if p.child_sha}}
        cands, table = [], []
        for sha in accepted:
            if sha is None:
                continue
            per = _val_scores(view, sha, task, key)
            if not per:
                continue
            cands.append(scores_from_results(sha, list(per.values()), task.objectives))
        cfg = row.config
        frontier = build_frontier(cands, list(task.instances.val) if task.instances else [], task.objectives,
                                  cfg.get("loop", {}).get("frontier", "instance"))
        weight = dict(zip(frontier.members, frontier.weights, strict=True))
        for c in cands:
            table.append({"candidate": labels.get(c.candidate, c.candidate[:10]), "sha": c.candidate,
                          "on_frontier": c.candidate in weight, "wins": weight.get(c.candidate, 0.0),
                          "objectives": dict(c.objectives)})
        best = max(table, key=lambda t: rank_key(t["objectives"], task.objectives), default=None)
        return {
            "run": view.name, "task": task.name, "state": row.state, "stop_reason": row.stop_reason,
            "iterations": row.iteration, "evals_used": row.evals_used, "usd_used": row.usd_used,
            "elapsed_s": row.elapsed_s, "budget": cfg.get("budget", {}), "model": cfg.get("model", {}).get("model"),
            "llm": view.store.llm_totals(view.name),
            "proposals": dict(Counter(f"{p.status}:{p.reason}" for p in proposals)),
            "merges": _merge_counts(view, proposals, labels),
            "candidates": table, "frontier": [labels.get(m, m[:10]) for m in frontier.members],
            "best": best["candidate"] if best else None,
        }
    finally:
        view.close()


def _merge_counts(view: RunView, proposals: list[ProposalRow], labels: dict) -> dict[str, Any]:
    """Merge attempts: how many, their outcomes, their resolutions, and each attempt's pair."""
    by_id = {p.id: p for p in proposals}
    merges = view.store.merges(view.name)
    attempts = [{"merge": f"c{m.proposal_id}", "parents": [labels.get(m.parent_a, m.parent_a[:10]),
                                                          labels.get(m.parent_b, m.parent_b[:10])],
                 "base": labels.get(m.base, m.base[:10]), "conflicts": m.conflicts, "resolution": m.resolution,
                 "outcome": f"{by_id[m.proposal_id].status}:{by_id[m.proposal_id].reason}"}
                for m in merges if m.proposal_id in by_id]
    return {"attempts": len(attempts), "accepted": sum(a["outcome"] == "accepted:accepted" for a in attempts),
            "outcomes": dict(Counter(a["outcome"] for a in attempts)),
            "resolutions": dict(Counter(a["resolution"] for a in attempts)), "pairs": attempts}


def _merge_view(view: RunView, p: ProposalRow) -> dict[str, Any] | None:
    """What each parent of a merged candidate contributed, its conflicts and their resolution."""
    merge = next((m for m in view.store.merges(view.name) if m.proposal_id == p.id), None)
    if merge is None:
        return None
    labels = {c.sha: (c.branch or c.sha[:10]).rsplit("/", 1)[-1] for c in view.store.candidates(view.name)}
    a, b = labels.get(merge.parent_a, merge.parent_a[:10]), labels.get(merge.parent_b, merge.parent_b[:10])
    side = {"a": a, "b": b, "both": f"{a} and {b}"}
    contributions = [{**c, "from": side.get(c["from"], c["from"]),
                      **({"resolution": side.get(c["resolution"], c["resolution"])} if "resolution" in c else {})}
                     for c in merge.contributions]
    return {"parents": [a, b], "base": labels.get(merge.base, merge.base[:10]), "conflicts": merge.conflicts,
            "resolution": merge.resolution, "parent_subsample_sums": {a: merge.parent_a_score,
                                                                      b: merge.parent_b_score},
            "contributions": contributions}


def resolve_candidate(view: RunView, ident: str) -> tuple[str, ProposalRow | None]:
    """'seed', 'best', 'c<N>', a branch or a sha -> (sha, its proposal if any)."""
    proposals = view.store.proposals(view.name)
    if ident == "best":
        ident = status(view.path)["best"] or "seed"
    if ident == "seed":
        sha = view.repo.branch_sha(seed_branch(view.name))
        if sha is None:
            raise UserInputError(f"{view.path}: the run has no seed commit yet")
        return sha, None
    if ident.startswith("c") and ident[1:].isdigit():
        for p in proposals:
            if p.id == int(ident[1:]):
                if p.child_sha is None:
                    raise UserInputError(f"{ident}: expected a candidate, found a proposal that produced no child "
                                         f"({p.reason}: {p.detail[:200]})")
                return p.child_sha, p
        raise UserInputError(f"{ident}: expected a candidate of run {view.name}, found no such id")
    sha = view.repo.resolve(ident)
    return sha, next((p for p in proposals if p.child_sha == sha), None)


def show(run_dir: str | Path, ident: str) -> dict[str, Any]:
    view = open_run(run_dir)
    try:
        sha, p = resolve_candidate(view, ident)
        task, key = _cache_key(view)
        info = view.repo.info(sha)
        parent = info.parents[0] if info.parents else None
        diff = view.repo.diff(parent, sha).decode(errors="replace") if parent else ""
        per = _val_scores(view, sha, task, key)
        mini = view.store.cached(key, view.repo.tree_sha(sha), p.minibatch) if p else {}
        return {
            "candidate": ident, "sha": sha, "branch": p.branch if p else seed_branch(view.name), "parent": parent,
            "kind": info.kind, "status": p.status if p else "seed", "reason": p.reason if p else None,
            "detail": p.detail if p else "", "diagnosis": p.diagnosis if p else "", "change": p.change if p else "",
            "minibatch": {i: r.score for (i, _), r in mini.items()},
            "parent_minibatch_sum": p.parent_score if p else None, "child_minibatch_sum": p.child_score if p else None,
            "val": {i: {"status": r.status, "score": r.score, "objectives": r.objectives} for i, r in per.items()},
            "diff": diff, "parents": list(info.parents),
            "merge": _merge_view(view, p) if p is not None and p.kind == "merge" else None,
        }
    finally:
        view.close()


def export(run_dir: str | Path, ident: str = "best", *, branch: str | None = None,
           patch: str | None = None) -> dict[str, Any]:
    if (branch is None) == (patch is None):
        raise UserInputError("export: expected exactly one of --branch NAME or --patch FILE")
    view = open_run(run_dir)
    try:
        sha, _ = resolve_candidate(view, ident)
        seed = view.repo.branch_sha(seed_branch(view.name))
        if branch is not None:
            view.repo.set_branch(branch, sha)
            return {"candidate": ident, "sha": sha, "branch": branch,
                    "fetch": f"git fetch {view.path / 'repo'} {branch}:{branch}"}
        assert patch is not None and seed is not None
        diff = view.repo.diff(seed, sha, binary=True)
        Path(patch).write_bytes(diff)
        return {"candidate": ident, "sha": sha, "patch": patch, "bytes": len(diff),
                "apply": "git apply --directory=<the task's seed folder> " + patch}
    finally:
        view.close()
