"""The builtin proposer: LLM-free, genetic-programming-style mutation of one Python file, guided by evidence
and by the run's own history.

One mutation per proposal (operators in mutations.py). Functions named by the structured traceback frames of
failing instances (or, without failures, by the profile's hot spots) are mutated more often, and the lines
those frames name more often still. The lesson log steers the rest: mutation kinds (the proposal's `operator`)
that got accepted are drawn more often (Thompson sampling), and a change already rejected from this parent is
not proposed again. Everything random comes from the rng passed in, and the history is read from the
proposal's context (not kept in the proposer), so a resumed run makes the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..evaluation import InstanceResult
from ..evidence import frames_of, hot_spots
from ..lessons import Lesson
from .base import Proposal, ProposalContext, ProposerSettings
from .mutations import KINDS, Preferences, Site, collect_sites, mutate, mutate_source

FOCUS_P = 0.85  # probability of mutating a file the evidence names, when there is one
NAME = "builtin"
# Outcomes that say something about a mutation kind (duplicates and no-ops cost nothing and say nothing).
JUDGED = ("accepted", "worse", "tie", "tradeoff", "gate", "raced", "crashed")


@dataclass
class Evidence:
    """What the results point at: functions and lines per file, and a one-line diagnosis."""

    functions: dict[str, set[str]] = field(default_factory=dict)
    lines: dict[str, set[int]] = field(default_factory=dict)
    diagnosis: str = "no failing instances; exploring"


def _match_file(path: str | None, files: Sequence[str]) -> str | None:
    if not path:
        return None
    path = path.replace("\\", "/")
    hits = [f for f in files if path == f or path.endswith("/" + f)]
    return max(hits, key=len) if hits else None


def read_evidence(results: Sequence[InstanceResult], files: Sequence[str]) -> Evidence:
    ev = Evidence()
    failing = [r for r in results if not r.ok]
    innermost: dict[tuple[str, int, str], int] = {}  # the deepest candidate frame of each failure -> count
    for r in failing:
        frames = [(f, fr.line, fr.function) for fr in frames_of(r) if (f := _match_file(fr.file, files))]
        for f, line, func in frames:
            ev.functions.setdefault(f, set()).add(func)
            ev.lines.setdefault(f, set()).add(line)
        if frames:
            innermost[frames[-1]] = innermost.get(frames[-1], 0) + 1
    if innermost:
        (f, line, func), n = max(sorted(innermost.items()), key=lambda kv: kv[1])
        ev.diagnosis = f"traceback in {func} ({f}:{line}) on {n} of {len(failing)} failing instance(s)"
        return ev
    hot = [(f, h) for h in hot_spots(results, top=3) if h.name and (f := _match_file(h.file, files))]
    for f, h in hot:
        ev.functions.setdefault(f, set()).add(h.name or "")
    if hot:
        f, h = hot[0]
        ev.diagnosis = f"profile hot spot {h.name} ({f}:{h.line})"
    if failing:
        statuses = ", ".join(sorted({r.status for r in failing}))
        ev.diagnosis = f"{len(failing)} failing instance(s) ({statuses}) without a traceback into the candidate" \
            + (f"; {ev.diagnosis}" if hot else "; exploring")
    return ev


def read_preferences(lessons: Sequence[Lesson]) -> Preferences:
    """What the lessons say about this proposer's own mutation kinds: accepted ones count as wins, worse or
    crashed ones as losses."""
    wins: dict[str, int] = {}
    losses: dict[str, int] = {}
    for lesson in lessons:
        if lesson.proposer != NAME or lesson.operator not in KINDS or lesson.reason not in JUDGED:
            continue
        table = wins if lesson.outcome == "accepted" else losses
        table[lesson.operator] = table.get(lesson.operator, 0) + 1
    return Preferences(wins=wins, losses=losses)


class BuiltinProposer:
    name = NAME

    def __init__(self, max_attempts: int = 20) -> None:
        self.max_attempts = max_attempts

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal:
        files = sorted(p for p, text in ctx.parent_files.items() if p.endswith(".py") and text is not None)
        ev = read_evidence(ctx.results, files)
        if not files:
            return Proposal(failure="noop", diagnosis=ev.diagnosis, detail="no Python file to mutate")
        avoid = {t.change for t in ctx.tried if t.proposer == NAME}
        prefs = read_preferences(ctx.lessons)
        sites = {p: collect_sites(ctx.parent_files[p] or "") for p in files}
        candidates = [p for p in files if sites[p] is not None and sites[p][1]]  # type: ignore[index]
        for _ in range(self.max_attempts if candidates else 0):
            hinted = [f for f in candidates if f in ev.functions]
            path = rng.choice(hinted if hinted and rng.random() < FOCUS_P else candidates)
            prefix = f"{path}: " if len(files) > 1 else ""
            got = mutate(ctx.parent_files[path] or "", rng, ev.functions.get(path), focus_lines=ev.lines.get(path),
                         attempts=1, prefs=prefs, avoid={t[len(prefix):] for t in avoid if t.startswith(prefix)})
            if got is not None:
                return Proposal(changes={path: got.source}, diagnosis=ev.diagnosis, change=prefix + got.description,
                                operator=got.kind)
        return Proposal(failure="noop", diagnosis=ev.diagnosis,
                        detail=f"no mutant that parses and differs from the parent in {self.max_attempts} attempts"
                        if candidates else "nothing mutable in " + ", ".join(files))


def make_builtin(settings: ProposerSettings) -> BuiltinProposer:
    """Registry factory (`evolver.proposers`: builtin); needs no LLM."""
    return BuiltinProposer()


__all__ = ["KINDS", "BuiltinProposer", "Evidence", "Preferences", "Site", "collect_sites", "make_builtin",
           "mutate_source", "read_evidence", "read_preferences"]
