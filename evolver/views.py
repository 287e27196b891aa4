"""Read-only views of a run for `evolver status`, `show` and `export`: shaped from `run_state.read_state`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import PASSING_STATUSES
from .errors import UserInputError
from .repo import RunRepo, seed_branch
from .run_state import RunState, merge_summary, read_state, stored_scores
from .store import LLMCallRow, ProposalRow, Store


def status(run_dir: str | Path) -> dict[str, Any]:
    state = read_state(run_dir)
    standings, cfg = state.standings, state.run.config
    frontier = standings.frontier()
    weight = dict(zip(frontier.members, frontier.weights, strict=True))
    table = [{"candidate": state.label(sha), "sha": sha, "on_frontier": sha in weight, "wins": weight.get(sha, 0.0),
              "objectives": dict(standings.scores(sha).objectives), "gate_breaches": len(standings.breaches(sha))}
             for sha in standings.candidates()]
    best = standings.best()
    row = state.run
    return {
        "run": state.name, "task": state.task.name, "state": state.state, "stop_reason": row.stop_reason,
        "stop_kind": row.stop_kind,
        "iterations": row.iteration, "evals_used": row.evals_used, "usd_used": row.usd_used,
        "elapsed_s": row.elapsed_s, "budget": cfg.get("budget", {}), "model": cfg.get("model", {}).get("model"),
        "proposer": cfg.get("proposer", {}).get("name"), "llm": dict(state.llm),
        "proposals": state.outcome_counts(), "merges": merge_summary(state),
        "candidates": table, "frontier": [state.label(m) for m in frontier.members],
        "best": state.label(best) if best else None,
        "best_per_instance": {i: [state.label(s) for s in c] for i, c in standings.best_per_instance().items()},
    }


def _merge_view(state: RunState, p: ProposalRow) -> dict[str, Any] | None:
    """What each parent of a merged candidate contributed, its conflicts and their resolution."""
    merge = next((m for m in state.merges if m.proposal_id == p.id), None)
    if merge is None:
        return None
    a, b = state.label(merge.parent_a), state.label(merge.parent_b)
    side = {"a": a, "b": b, "both": f"{a} and {b}"}
    contributions = [{**c, "from": side.get(c["from"], c["from"]),
                      **({"resolution": side.get(c["resolution"], c["resolution"])} if "resolution" in c else {})}
                     for c in merge.contributions]
    return {"parents": [a, b], "base": state.label(merge.base), "conflicts": merge.conflicts,
            "resolution": merge.resolution, "parent_subsample_sums": {a: merge.parent_a_score,
                                                                      b: merge.parent_b_score},
            "contributions": contributions}


def resolve_candidate(state: RunState, repo: RunRepo, ident: str) -> tuple[str, ProposalRow | None]:
    """'seed', 'best', 'c<N>', a branch or a sha -> (sha, its proposal if any)."""
    if ident == "best":
        best = state.best()
        return (best, state.proposal_of(best)) if best else (state.seed, None)
    if ident == "seed":
        return state.seed, None
    if ident.startswith("c") and ident[1:].isdigit():
        p = next((p for p in state.proposals if p.id == int(ident[1:])), None)
        if p is None:
            raise UserInputError(f"{ident}: expected a candidate of run {state.name}, found no such id")
        if p.child_sha is None:
            raise UserInputError(f"{ident}: expected a candidate, found a proposal that produced no child "
                                 f"({p.reason}: {p.detail[:200]})")
        return p.child_sha, p
    sha = repo.resolve(ident)
    return sha, state.proposal_of(sha)


def _llm_call_view(call: LLMCallRow) -> dict[str, Any]:
    return {k: v for k, v in asdict(call).items() if k not in ("id", "run", "proposal_id", "request_hash")}


def _llm_calls(state: RunState, proposal_id: int) -> list[dict[str, Any]]:
    store = Store(state.path / "run.db")
    try:
        return [_llm_call_view(c) for c in store.llm_calls(state.name, proposal_id)]
    finally:
        store.close()


def _childless(state: RunState, ident: str) -> ProposalRow | None:
    """The proposal `c<N>` names when it produced no child (it failed before one was committed)."""
    if not (ident.startswith("c") and ident[1:].isdigit()):
        return None
    return next((p for p in state.proposals if p.id == int(ident[1:]) and p.child_sha is None), None)


def _proposal_only(state: RunState, ident: str, p: ProposalRow) -> dict[str, Any]:
    """`show` of a proposal without a child: why it failed, and the LLM calls it made (with their errors)."""
    return {
        "candidate": ident, "sha": None, "branch": None, "parent": p.parent_sha, "kind": p.kind,
        "status": p.status, "reason": p.reason, "detail": p.detail, "diagnosis": p.diagnosis, "change": p.change,
        "proposer": p.proposer, "operator": p.operator, "minibatch": {}, "parent_minibatch_sum": p.parent_score,
        "child_minibatch_sum": None, "val": {}, "diff": "", "parents": list(p.parents),
        "merge": _merge_view(state, p) if p.kind == "merge" else None, "llm_calls": _llm_calls(state, p.id),
    }


def show(run_dir: str | Path, ident: str) -> dict[str, Any]:
    state = read_state(run_dir)
    failed = _childless(state, ident)
    if failed is not None:
        return _proposal_only(state, ident, failed)
    repo = RunRepo.open_existing(state.path / "repo")
    sha, p = resolve_candidate(state, repo, ident)
    info = repo.info(sha)
    parent = info.parents[0] if info.parents else None
    diff = repo.diff(parent, sha).decode(errors="replace") if parent else ""
    results = state.standings.results(sha) if sha in state.standings else ()
    val = {r.instance: {"status": r.status, "score": r.score, "objectives": r.objectives} for r in results}
    # What went wrong where: every validation instance that did not pass, with the start of its feedback.
    failures = [{"instance": r.instance, "status": r.status, "feedback": "\n".join(r.feedback.splitlines()[:12])}
                for r in results if r.status not in PASSING_STATUSES]
    mini: dict[str, float] = {}
    calls: list[dict[str, Any]] = []
    if p is not None:
        store = Store(state.path / "run.db", readonly=True)
        try:
            mini = stored_scores(store, state.eval_key, repo.tree_sha(sha), p.minibatch)
            calls = [_llm_call_view(c) for c in store.llm_calls(state.name, p.id)]
        finally:
            store.close()
    return {
        "candidate": ident, "sha": sha, "branch": p.branch if p else seed_branch(state.name), "parent": parent,
        "kind": info.kind, "status": p.status if p else "seed", "reason": p.reason if p else None,
        "detail": p.detail if p else "", "diagnosis": p.diagnosis if p else "", "change": p.change if p else "",
        "proposer": p.proposer if p else None, "operator": p.operator if p else None,
        "minibatch": mini, "parent_minibatch_sum": p.parent_score if p else None,
        "child_minibatch_sum": p.child_score if p else None, "val": val, "diff": diff,
        "parents": list(info.parents), "merge": _merge_view(state, p) if p is not None and p.kind == "merge" else None,
        "llm_calls": calls, "failures": failures,
        "gate_breaches": list(state.standings.breaches(sha)) if sha in state.standings else [],
    }


def _refusal(state: RunState, sha: str, p: ProposalRow | None, ident: str) -> str | None:
    """Why a candidate is not exported without --force: it breaks the task's gates (on its validation, or it
    was rejected for a breach)."""
    breaches = state.standings.breaches(sha) if sha in state.standings else ()
    if breaches:
        return (f"{ident} breaks the task's gates on {len(breaches)} validation instance(s) "
                f"({'; '.join(breaches[:3])})")
    if p is not None and p.reason == "gate":
        return f"{ident} was rejected for breaking the task's gates ({p.detail[:300]})"
    return None


def export(run_dir: str | Path, ident: str = "best", *, branch: str | None = None,
           patch: str | None = None, force: bool = False) -> dict[str, Any]:
    if (branch is None) == (patch is None):
        raise UserInputError("export: expected exactly one of --branch NAME or --patch FILE")
    state = read_state(run_dir)
    repo = RunRepo.open_existing(state.path / "repo")
    sha, p = resolve_candidate(state, repo, ident)
    refusal = _refusal(state, sha, p, ident)
    if refusal and not force:
        raise UserInputError(f"export: {refusal}: not exported (--force exports it anyway)")
    if branch is not None:
        repo.set_branch(branch, sha)
        return {"candidate": ident, "sha": sha, "branch": branch,
                "fetch": f"git fetch {state.path / 'repo'} {branch}:{branch}"}
    assert patch is not None
    diff = repo.diff(state.seed, sha, binary=True)
    Path(patch).write_bytes(diff)
    return {"candidate": ident, "sha": sha, "patch": patch, "bytes": len(diff), "apply": apply_hint(state, patch)}


def apply_hint(state: RunState, patch: str) -> str:
    """How to apply a patch against the seed: its paths are relative to the seed folder, so in that folder (or in
    the repository `evolver init` copied it from) plainly; from the top of a git repository holding the seed
    folder, with --directory set to where it is there."""
    seed, path = state.task.seed_dir.resolve(), Path(patch).resolve()
    top = next((d for d in (seed, *seed.parents) if (d / ".git").exists()), None)
    here = (f"cd {seed} && git apply {path}" if top is None or top == seed else
            f"git -C {top} apply --directory={seed.relative_to(top)} {path}")
    return f"{here} (or `git apply {path}` at the top of the repository the seed was copied from)"
