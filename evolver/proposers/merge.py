"""Merging two candidates: a 3-way merge of both parents' diffs against their merge base, then the resolution
of every conflicting hunk, by an LLM (edits validated like any patch, with repair turns) or, LLM-free, by
taking the side of the parent that scores better where the parents' changes moved the scores.

Files changed by one parent only are taken from it; files both changed go through `git merge-file --diff3`,
so a clean merge is exactly what git would make. Every hunk is recorded with the parent it came from, and
every conflict with how it was resolved: `evolver show` tells which parent contributed what.
"""

from __future__ import annotations

import difflib
import random
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import libcst

from ..config import MERGE_KIND
from ..hunks import changed_ranges, text_of, touch
from ..llm import LLM, LLMError
from ..patch_parsing import parse_reply
from ..patches import truncated
from .base import MergeRecord, ParentInfo, Proposal, ProposalContext
from .prompts import Prompts, load_prompts, merge_prompt
from .reflective import reply_section

MARKER_SIZE = 19  # conflict markers longer than any a program plausibly contains


@dataclass(frozen=True)
class Conflict:
    """Both parents changed the same lines of the base (or lines next to each other)."""

    index: int  # 1-based over the whole merge
    path: str
    base: str
    a: str
    b: str
    indent: str = ""  # of the placeholder line that stands for the conflict in the file shown to the LLM
    whole_file: bool = False  # binary, deleted or created on both sides: only a whole side can be chosen

    @property
    def placeholder(self) -> str:
        return f"{self.indent}<<CONFLICT {self.index}>>"


Segment = str | Conflict


@dataclass(frozen=True)
class FileMerge:
    """A file both parents changed: clean text and conflicts, in order."""

    path: str
    segments: tuple[Segment, ...]
    sides: Mapping[str, bytes | None] = field(default_factory=dict)  # whole-file conflicts: a -> bytes, b -> bytes

    @property
    def conflicts(self) -> list[Conflict]:
        return [s for s in self.segments if isinstance(s, Conflict)]

    def render(self, choose: Callable[[Conflict], str]) -> str:
        return "".join(s if isinstance(s, str) else choose(s) for s in self.segments)

    def with_placeholders(self) -> str:
        return self.render(lambda c: c.placeholder + "\n")


@dataclass(frozen=True)
class ThreeWay:
    """The result of merging: files to change on top of parent A, files with conflicts, and who gave what."""

    changes: Mapping[str, str | bytes | None]  # path -> new content (None: deleted), clean files only
    conflicted: Mapping[str, FileMerge]
    contributions: tuple[dict[str, Any], ...]

    @property
    def conflicts(self) -> list[Conflict]:
        return [c for f in self.conflicted.values() for c in f.conflicts]


@dataclass(frozen=True)
class Resolved:
    """Resolved conflicted files (path -> text or None), how each conflict was resolved, or a failure."""

    files: Mapping[str, str | bytes | None] = field(default_factory=dict)
    how: Mapping[int, str] = field(default_factory=dict)  # conflict index -> a | b | llm
    why: str = ""
    failure: str | None = None  # conflict_unresolved | llm_error | truncated
    detail: str = ""


class ConflictResolver(Protocol):
    name: str  # recorded as the merge's resolution when there were conflicts

    def resolve(self, merged: Mapping[str, FileMerge], ctx: ProposalContext) -> Resolved: ...


# -- the 3-way merge --------------------------------------------------------------------------------------
def _hunk_notes(path: str, base: str, side: str, source: str, skip: Sequence[tuple[int, int]]) -> list[dict]:
    notes = []
    matcher = difflib.SequenceMatcher(None, base.splitlines(), side.splitlines(), autojunk=False)
    new_lines = side.splitlines()
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or any(touch((i1, i2), s) for s in skip):
            continue
        first = next((ln.strip() for ln in new_lines[j1:j2] if ln.strip()), "(lines removed)")
        notes.append({"path": path, "from": source, "base_lines": [i1 + 1, i2], "text": first[:80]})
    return notes


def _merge_file(base: str, a: str, b: str) -> tuple[str, int]:
    with tempfile.TemporaryDirectory(prefix="evolver-merge-") as tmp:
        paths = []
        for name, text in (("a", a), ("base", base), ("b", b)):
            p = Path(tmp) / name
            p.write_text(text, encoding="utf-8")
            paths.append(str(p))
        proc = subprocess.run(["git", "merge-file", "-p", "--diff3", f"--marker-size={MARKER_SIZE}",
                               "-L", "a", "-L", "base", "-L", "b", *paths], capture_output=True, check=False)
    if proc.returncode < 0 or proc.returncode > 127:
        raise RuntimeError(f"git merge-file failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8"), proc.returncode


def _segments(path: str, merged: str, first_index: int) -> tuple[Segment, ...]:
    """Split git's diff3 output into clean text and conflicts."""
    start, mid_base, mid, end = ("<" * MARKER_SIZE + " a", "|" * MARKER_SIZE + " base", "=" * MARKER_SIZE,
                                 ">" * MARKER_SIZE + " b")
    out: list[Segment] = []
    clean: list[str] = []
    parts: dict[str, list[str]] = {}
    state = None
    for line in merged.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if state is None and bare == start:
            state, parts = "a", {"a": [], "base": [], "b": []}
            continue
        if state == "a" and bare == mid_base:
            state = "base"
            continue
        if state in ("a", "base") and bare == mid:
            state = "b"
            continue
        if state == "b" and bare == end:
            if clean:
                out.append("".join(clean))
                clean = []
            body = next((ln for k in ("a", "b", "base") for ln in parts[k] if ln.strip()), "")
            indent = body[: len(body) - len(body.lstrip())]
            out.append(Conflict(first_index + sum(isinstance(s, Conflict) for s in out), path,
                                "".join(parts["base"]), "".join(parts["a"]), "".join(parts["b"]), indent))
            state = None
            continue
        if state is None:
            clean.append(line)
        else:
            parts[state].append(line if line.endswith("\n") else line + "\n")
    if clean:
        out.append("".join(clean))
    return tuple(out)


def three_way(base: Mapping[str, bytes], a: Mapping[str, bytes], b: Mapping[str, bytes]) -> ThreeWay:
    """Merge B's diff against the base into A (files as bytes, '/'-relative paths)."""
    changes: dict[str, str | bytes | None] = {}
    conflicted: dict[str, FileMerge] = {}
    notes: list[dict[str, Any]] = []
    index = 1
    for path in sorted(set(base) | set(a) | set(b)):
        b0, fa, fb = base.get(path), a.get(path), b.get(path)
        if fa == fb:
            if fa != b0:
                notes.append({"path": path, "from": "both", "text": "the same change in both parents"})
            continue
        if fa == b0 or fb == b0:
            source, content = ("b", fb) if fa == b0 else ("a", fa)
            if source == "b":
                changes[path] = fb
            t0, ts = text_of(b0), text_of(content)
            if t0 is not None and ts is not None:
                notes += _hunk_notes(path, t0, ts, source, ())
            else:
                notes.append({"path": path, "from": source, "text": "whole file" if content is not None
                              else "deleted"})
            continue
        t0, ta, tb = (text_of(b0) if b0 is not None else ""), text_of(fa), text_of(fb)
        if t0 is None or ta is None or tb is None:
            conflicted[path] = FileMerge(path, (Conflict(index, path, t0 or "", ta or "", tb or "",
                                                         whole_file=True),), {"a": fa, "b": fb})
            index += 1
            continue
        merged, n = _merge_file(t0, ta, tb)
        ra, rb = changed_ranges(t0, ta), changed_ranges(t0, tb)
        notes += _hunk_notes(path, t0, ta, "a", rb) + _hunk_notes(path, t0, tb, "b", ra)
        if n == 0:
            changes[path] = merged
        else:
            fm = FileMerge(path, _segments(path, merged, index))
            conflicted[path] = fm
            index += len(fm.conflicts)
    return ThreeWay(changes, conflicted, tuple(notes))


def syntax_problem(path: str, content: str | bytes | None) -> str | None:
    if content is None or not path.endswith(".py"):
        return None
    try:
        libcst.parse_module(content if isinstance(content, str) else content.decode("utf-8"))
    except (libcst.ParserSyntaxError, UnicodeDecodeError) as exc:
        return f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


class MergeProposer:
    """A proposal with two parents: B's changes since the merge base merged into A, conflicts resolved by the
    resolver. The engine validates, commits (a two-parent merge commit), evaluates and accepts it like any
    proposal."""

    name = MERGE_KIND

    def __init__(self, resolver: ConflictResolver) -> None:
        self.resolver = resolver

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal:
        a, b, base = ctx.parents[0], ctx.parents[1], ctx.base
        assert base is not None, "a merge needs the merge base"
        title = f"merge of {a.label} and {b.label} (base {base.label})"
        wins = _wins_line(a.label, a.wins, b.label, b.wins)
        tw = three_way(base.files, a.files, b.files)
        changes = dict(tw.changes)
        contributions = list(tw.contributions)
        conflicts = tw.conflicts
        resolution, why = "clean", ""
        if conflicts:
            resolution = self.resolver.name
            resolved = self.resolver.resolve(tw.conflicted, ctx)
            why = resolved.why
            contributions += [{"path": c.path, "from": "conflict", "conflict": c.index,
                               "resolution": resolved.how.get(c.index, "unresolved"), "why": resolved.why}
                              for c in conflicts]
            if resolved.failure is not None:
                return Proposal(diagnosis=wins, change=f"{title}: {len(conflicts)} conflict(s), unresolved",
                                failure=resolved.failure, detail=resolved.detail,
                                merge=MergeRecord(len(conflicts), "failed", tuple(contributions)))
            changes.update(resolved.files)
        how = f"{len(conflicts)} conflict(s), resolution {resolution}" if conflicts else "clean"
        if why:  # what the resolution did, for the lesson log and the next merge prompts
            how += f" ({why})"
        record = MergeRecord(len(conflicts), resolution, tuple(contributions))
        for path, content in changes.items():
            # Two edits that each parse can still merge into a program that does not (or a resolution may).
            problem = syntax_problem(path, content)
            if problem:
                return Proposal(diagnosis=wins, change=f"{title}: {how}", failure="syntax", detail=problem,
                                merge=replace(record, resolution="failed"))
        changes = {p: c for p, c in changes.items() if a.files.get(p) != (c.encode() if isinstance(c, str) else c)}
        if not changes:  # every conflict went A's way and B brought nothing else: the merge would be A again
            return Proposal(diagnosis=wins, change=f"{title}: {how}", failure="duplicate",
                            detail=f"the merge has the same files as {a.label}", merge=record)
        return Proposal(changes=changes, diagnosis=wins, change=f"{title}: {how}", operator=resolution,
                        merge=record)


def _wins_line(la: str, a_wins: Sequence[str], lb: str, b_wins: Sequence[str]) -> str:
    def names(ids: Sequence[str]) -> str:
        return ", ".join(ids[:8]) + (f" (+{len(ids) - 8})" if len(ids) > 8 else "") if ids else "none"

    return f"{la} is better on {names(a_wins)}; {lb} on {names(b_wins)}"


# -- resolvers --------------------------------------------------------------------------------------------
def _side(c: Conflict, side: str) -> str:
    return c.a if side == "a" else c.b


def moved_sum(parent: ParentInfo, moved: Sequence[str]) -> float:
    per = parent.val.per_instance if parent.val is not None else {}
    return sum(per.get(i) or 0.0 for i in moved)


def _better_side(ctx: ProposalContext) -> tuple[str, str]:
    """The parent that scores better where their changes moved the scores (ties: the better mean score)."""
    a, b = ctx.parents[0], ctx.parents[1]
    mean = [(p.val.objectives.get("score") or 0.0) if p.val is not None else 0.0 for p in (a, b)]
    sums = (moved_sum(a, ctx.moved), moved_sum(b, ctx.moved))
    side = "a" if (sums[0], mean[0]) >= (sums[1], mean[1]) else "b"
    why = (f"{a.label} sums {sums[0]:.4g}, {b.label} {sums[1]:.4g} on the {len(ctx.moved)} "
           "validation instances where the parents differ from the base")
    return side, why


class ScoreResolver:
    """LLM-free: per conflicting hunk, the side of the parent that scores better on the instances touched."""

    name = "builtin"

    def resolve(self, merged: Mapping[str, FileMerge], ctx: ProposalContext) -> Resolved:
        side, why = _better_side(ctx)
        files: dict[str, str | bytes | None] = {}
        how: dict[int, str] = {}
        for path, fm in merged.items():
            files[path] = fm.sides[side] if fm.sides else fm.render(lambda c: _side(c, side))
            how.update({c.index: side for c in fm.conflicts})
        return Resolved(files=files, how=how, why=why)


class LLMResolver:
    """An LLM resolves the conflicts with edits on the placeholder lines; failures get repair turns."""

    name = "llm"

    def __init__(self, llm: LLM, repair_turns: int = 2, prompts: Prompts | None = None) -> None:
        self.llm, self.repair_turns = llm, repair_turns
        self.prompts = prompts or load_prompts()

    def resolve(self, merged: Mapping[str, FileMerge], ctx: ProposalContext) -> Resolved:
        whole = {p: fm for p, fm in merged.items() if fm.conflicts[0].whole_file}
        textual = {p: fm for p, fm in merged.items() if p not in whole}
        # Binary, deleted or both-created files have no lines to combine: the better parent's version is kept.
        fallback = ScoreResolver().resolve(whole, ctx) if whole else Resolved()
        if not textual:
            return fallback
        messages = [{"role": "system", "content": self.prompts.render("merge_system")},
                    {"role": "user", "content": merge_prompt(self.prompts, textual, ctx)}]
        detail = ""
        for turn in range(self.repair_turns + 1):
            try:
                reply = self.llm.complete(messages, purpose="merge" if turn == 0 else "merge_repair")
            except LLMError as exc:
                return Resolved(failure="llm_error", detail=str(exc))
            text = reply.text or ""
            if reply.truncated or truncated(text):
                return Resolved(failure="truncated", detail=f"the reply was cut off (finish_reason="
                                f"{reply.finish_reason})")
            resolved, problems = fill_placeholders(text, textual)
            if not problems:
                how = {c.index: "llm" for fm in textual.values() for c in fm.conflicts}
                return Resolved(files={**fallback.files, **{p: resolved[p] for p in textual}},
                                how={**fallback.how, **how}, why=_change_line(text))
            detail = f"after {turn + 1} turn(s): " + "\n".join(problems)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": self.prompts.render("merge_repair",
                                                                         problems="\n".join(problems))}]
        return Resolved(failure="conflict_unresolved", detail=detail)


_PLACEHOLDER = re.compile(r"^\s*<<CONFLICT (\d+)>>\s*$")


def _resolution(c: Conflict, lines: Sequence[str]) -> str:
    """The lines a reply gave for a conflict, where the placeholder stood. Lines given as they must stand in
    the file are taken as they are; lines given from column 0 (the placeholder's own indentation left out) are
    indented by it, so both ways of answering give the same file."""
    first = next((ln for ln in lines if ln.strip()), "")
    shift = c.indent if c.indent and first and not first[0].isspace() else ""
    return "".join((shift + ln if ln.strip() else ln) + "\n" for ln in lines)


def fill_placeholders(reply: str, textual: Mapping[str, FileMerge]) -> tuple[dict[str, str], list[str]]:
    """The conflicted files with the reply's resolutions in place of their placeholders, and what is wrong with
    the reply (an edit that is not of a placeholder, a placeholder of no conflict, conflicts left unresolved)."""
    parsed = parse_reply(reply)
    problems = [str(e) for e in parsed.errors]
    conflicts = {c.index: c for fm in textual.values() for c in fm.conflicts}
    chosen: dict[int, str] = {}
    for edit in parsed.edits:
        search = [ln for ln in edit.search if ln.strip()]
        m = _PLACEHOLDER.match(search[0]) if edit.op == "replace" and len(search) == 1 else None
        c = conflicts.get(int(m.group(1))) if m else None
        if c is None or c.path != edit.path:
            found = repr(search[0].strip()[:60]) if search else f"a {edit.op} of the whole file"
            problems.append(f"{edit.describe()} ({edit.path}): expected SEARCH to be one conflict placeholder line of "
                            f"that file, such as {next(iter(conflicts.values())).placeholder.strip()}, found {found}")
            continue
        chosen[c.index] = _resolution(c, edit.replace)
    left = [c for c in conflicts.values() if c.index not in chosen]
    if left and not problems:
        problems.append("Still unresolved: " + ", ".join(f"<<CONFLICT {c.index}>> in {c.path}" for c in left) +
                        ". Replace every placeholder.")
    files = {p: fm.render(lambda c: chosen.get(c.index, c.placeholder + "\n")) for p, fm in textual.items()}
    return files, problems


def _change_line(reply: str) -> str:
    """The reply's Change section (why the conflicts were resolved so), for the record."""
    return reply_section(reply, "Change")[:300]
