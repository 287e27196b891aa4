"""The builtin proposer: LLM-free, genetic-programming-style mutation of one Python file, guided by evidence
and by the run's own history.

One mutation per proposal (operators in mutations.py). Functions named in the tracebacks of failing instances
(or, without failures, the profile's hot spots) are mutated more often, and the lines a traceback names more
often still. The lesson log steers the rest: mutation kinds that got accepted are drawn more often (Thompson
sampling), and a change already rejected from this parent is not proposed again. Everything random comes from
the rng passed in, and the history is read from the proposal's context (not kept in the proposer), so a resumed
run makes the same choices.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..evaluation import InstanceResult
from .base import Proposal, ProposalContext
from .mutations import KINDS, Preferences, Site, collect_sites, mutate_source

FOCUS_P = 0.85  # probability of mutating a file the evidence names, when there is one
TRACEBACK_RE = re.compile(r'File "([^"]+)", line (\d+), in ([\w<>]+)')
PROFILE_RE = re.compile(r"^(.*):(\d+)\((.+)\)$")
# A line of the relevant lessons (lessons.Lesson.line): "- [outcome: reason delta] (files) diagnosis: ... |
# change: ...". Only changes this proposer describes are read back.
LESSON_RE = re.compile(r"^- \[(\w+): (\w+)[^\]]*\] .*? \| change: (.*)$")
KIND_OF_CHANGE = (("perturb constant", "perturb"), ("swap operator", "swap_op"), ("swap comparison", "swap_op"),
                  ("replace", "replace"), ("combine", "combine"), ("negate condition", "branch"),
                  ("swap if/else", "branch"), ("swap branches", "branch"), ("drop statement", "statement"),
                  ("duplicate statement", "statement"))
REASON_RE = re.compile(r"^\w+: ")  # the "worse: " / "crashed: " in front of a tried change


@dataclass
class Evidence:
    """What the results point at: functions and lines per file, and a one-line diagnosis."""

    functions: dict[str, set[str]] = field(default_factory=dict)
    lines: dict[str, set[int]] = field(default_factory=dict)
    diagnosis: str = "no failing instances; exploring"


def _match_file(path: str, files: Sequence[str]) -> str | None:
    path = path.replace("\\", "/")
    hits = [f for f in files if path == f or path.endswith("/" + f)]
    return max(hits, key=len) if hits else None


def read_evidence(results: Sequence[InstanceResult], files: Sequence[str]) -> Evidence:
    ev = Evidence()
    failing = [r for r in results if not r.ok]
    innermost: dict[tuple[str, int, str], int] = {}  # the deepest candidate frame of each traceback -> count
    for r in failing:
        frames = [(f, int(line), func) for path, line, func in TRACEBACK_RE.findall(f"{r.feedback}\n{r.stderr}")
                  if (f := _match_file(path, files)) is not None]
        for f, line, func in frames:
            ev.functions.setdefault(f, set()).add(func)
            ev.lines.setdefault(f, set()).add(line)
        if frames:
            innermost[frames[-1]] = innermost.get(frames[-1], 0) + 1
    if innermost:
        (f, line, func), n = max(sorted(innermost.items()), key=lambda kv: kv[1])
        ev.diagnosis = f"traceback in {func} ({f}:{line}) on {n} of {len(failing)} failing instance(s)"
        return ev
    cum: dict[tuple[str, str, int], float] = {}
    for r in results:
        for row in r.profile:
            m = PROFILE_RE.match(str(row.get("function", "")))
            f = _match_file(m.group(1), files) if m else None
            if m and f is not None:
                key = (f, m.group(3), int(m.group(2)))
                cum[key] = cum.get(key, 0.0) + float(row.get("cumtime_s", 0.0) or 0.0)
    hot = sorted(cum.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    for (f, func, _line), _t in hot:
        ev.functions.setdefault(f, set()).add(func)
    if hot:
        (f, func, line), _t = hot[0]
        ev.diagnosis = f"profile hot spot {func} ({f}:{line})"
    if failing:
        statuses = ", ".join(sorted({r.status for r in failing}))
        ev.diagnosis = f"{len(failing)} failing instance(s) ({statuses}) without a traceback into the candidate" \
            + (f"; {ev.diagnosis}" if hot else "; exploring")
    return ev


def _kind_of(change: str) -> str | None:
    return next((kind for prefix, kind in KIND_OF_CHANGE if change.startswith(prefix)), None)


def read_preferences(lessons: str) -> Preferences:
    """What the lessons (most relevant, i.e. most recent, first) say about this proposer's own mutations."""
    wins: dict[str, int] = {}
    losses: dict[str, int] = {}
    for line in lessons.splitlines():
        m = LESSON_RE.match(line.strip())
        if m is None:
            continue
        outcome, reason, change = m.groups()
        change = re.sub(r"^\S+\.py: ", "", change)  # the file in front of a change when several are mutable
        kind = _kind_of(change)
        if kind is None or reason not in ("accepted", "worse", "crashed"):  # duplicates and no-ops cost nothing
            continue
        table = wins if outcome == "accepted" else losses
        table[kind] = table.get(kind, 0) + 1
    return Preferences(wins=wins, losses=losses)


class BuiltinProposer:
    name = "builtin"

    def __init__(self, max_attempts: int = 20) -> None:
        self.max_attempts = max_attempts

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal:
        files = sorted(p for p, text in ctx.parent_files.items() if p.endswith(".py") and text is not None)
        ev = read_evidence(ctx.results, files)
        if not files:
            return Proposal(failure="noop", diagnosis=ev.diagnosis, detail="no Python file to mutate")
        # The engine lists tried changes as "reason: change"; a bare change is accepted too.
        avoid = {t.strip() for t in ctx.tried} | {REASON_RE.sub("", t.strip()) for t in ctx.tried}
        prefs = read_preferences(ctx.lessons)
        sites = {p: collect_sites(ctx.parent_files[p] or "") for p in files}
        candidates = [p for p in files if sites[p] is not None and sites[p][1]]  # type: ignore[index]
        for _ in range(self.max_attempts if candidates else 0):
            hinted = [f for f in candidates if f in ev.functions]
            path = rng.choice(hinted if hinted and rng.random() < FOCUS_P else candidates)
            prefix = f"{path}: " if len(files) > 1 else ""
            got = mutate_source(ctx.parent_files[path] or "", rng, ev.functions.get(path),
                                focus_lines=ev.lines.get(path), attempts=1, prefs=prefs,
                                avoid={t[len(prefix):] for t in avoid if t.startswith(prefix)})
            if got is not None:
                new, desc = got
                return Proposal(changes={path: new}, diagnosis=ev.diagnosis, change=prefix + desc)
        return Proposal(failure="noop", diagnosis=ev.diagnosis,
                        detail=f"no mutant that parses and differs from the parent in {self.max_attempts} attempts"
                        if candidates else "nothing mutable in " + ", ".join(files))


__all__ = ["KINDS", "BuiltinProposer", "Evidence", "Preferences", "Site", "collect_sites", "mutate_source",
           "read_evidence", "read_preferences"]
