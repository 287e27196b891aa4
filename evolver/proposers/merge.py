"""Merging two candidates: a 3-way merge of both parents' diffs against their merge base, then the resolution
of every conflicting hunk, by an LLM (edits validated like any patch, with repair turns) or, LLM-free, by
taking the side of the parent that scores better where the parents' changes moved the scores.

Files changed by one parent only are taken from it; files both changed go through `git merge-file --diff3`,
so a clean merge is exactly what git would make. Every hunk is recorded with the parent it came from, and
every conflict with how it was resolved: `evolver show` tells which parent contributed what.
"""

from __future__ import annotations

import difflib
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import libcst

from ..llm import LLM, LLMError
from ..patches import apply_reply, truncated
from ..task import Task
from .reflective import _section as reply_section

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
class ParentSummary:
    """What the resolver knows of one parent."""

    label: str  # c3, seed, ...
    sha: str
    wins: tuple[str, ...]  # validation instances where it beats the other parent
    objectives: Mapping[str, float | None]
    moved_sum: float  # its score sum on the validation instances where either parent differs from the base
    reflections: tuple[str, ...] = ()  # diagnosis and change of the proposals since the base, one line each


@dataclass(frozen=True)
class MergeRequest:
    task: Task
    a: ParentSummary
    b: ParentSummary
    base_label: str
    moved: tuple[str, ...] = ()  # the instances behind moved_sum
    lessons: str = ""


@dataclass(frozen=True)
class Resolved:
    """Resolved conflicted files (path -> text or None), how each conflict was resolved, or a failure."""

    files: Mapping[str, str | bytes | None] = field(default_factory=dict)
    how: Mapping[int, str] = field(default_factory=dict)  # conflict index -> a | b | llm
    why: str = ""
    failure: str | None = None  # conflict_unresolved | llm_error | truncated
    detail: str = ""


@dataclass(frozen=True)
class MergeOutcome:
    changes: Mapping[str, str | bytes | None] = field(default_factory=dict)  # on top of parent A
    contributions: tuple[dict[str, Any], ...] = ()
    conflicts: int = 0
    resolution: str = "clean"  # clean | llm | builtin | failed
    failure: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


class ConflictResolver(Protocol):
    name: str  # recorded as the merge's resolution when there were conflicts

    def resolve(self, merged: Mapping[str, FileMerge], request: MergeRequest) -> Resolved: ...


# -- the 3-way merge --------------------------------------------------------------------------------------
def _text(data: bytes | None) -> str | None:
    if data is None or b"\0" in data:  # git merge-file refuses NUL bytes: such a file is merged as binary
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def changed_ranges(base: str, side: str) -> list[tuple[int, int]]:
    """Line ranges [start, end) of the base that `side` changed (an insertion is an empty range)."""
    matcher = difflib.SequenceMatcher(None, base.splitlines(), side.splitlines(), autojunk=False)
    return [(i1, i2) for tag, i1, i2, _, _ in matcher.get_opcodes() if tag != "equal"]


def _touch(r: tuple[int, int], s: tuple[int, int]) -> bool:
    """git merges two changes cleanly only when unchanged lines separate them: touching counts as overlap."""
    return r[0] <= s[1] and s[0] <= r[1]


def overlapping_hunks(base: Mapping[str, bytes], a: Mapping[str, bytes], b: Mapping[str, bytes]) -> int:
    """How many hunks of A's diff against the base touch a hunk of B's (0: the diffs merge cleanly)."""
    count = 0
    for path in set(a) | set(b) | set(base):
        b0, fa, fb = base.get(path), a.get(path), b.get(path)
        if fa in (b0, fb) or fb == b0:
            continue
        t0, ta, tb = _text(b0) or "", _text(fa), _text(fb)
        if ta is None or tb is None:
            count += 1
            continue
        hb = changed_ranges(t0, tb)
        count += sum(any(_touch(r, s) for s in hb) for r in changed_ranges(t0, ta))
    return count


def _hunk_notes(path: str, base: str, side: str, source: str, skip: Sequence[tuple[int, int]]) -> list[dict]:
    notes = []
    matcher = difflib.SequenceMatcher(None, base.splitlines(), side.splitlines(), autojunk=False)
    new_lines = side.splitlines()
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or any(_touch((i1, i2), s) for s in skip):
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
            t0, ts = _text(b0), _text(content)
            if t0 is not None and ts is not None:
                notes += _hunk_notes(path, t0, ts, source, ())
            else:
                notes.append({"path": path, "from": source, "text": "whole file" if content is not None
                              else "deleted"})
            continue
        t0, ta, tb = (_text(b0) if b0 is not None else ""), _text(fa), _text(fb)
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


class Merger:
    """Merges two parents; conflicts go to the resolver."""

    def __init__(self, resolver: ConflictResolver) -> None:
        self.resolver = resolver

    def merge(self, base: Mapping[str, bytes], a: Mapping[str, bytes], b: Mapping[str, bytes],
              request: MergeRequest) -> MergeOutcome:
        tw = three_way(base, a, b)
        changes = dict(tw.changes)
        contributions = list(tw.contributions)
        conflicts = tw.conflicts
        resolution = "clean"
        if conflicts:
            resolution = self.resolver.name
            resolved = self.resolver.resolve(tw.conflicted, request)
            contributions += [{"path": c.path, "from": "conflict", "conflict": c.index,
                               "resolution": resolved.how.get(c.index, "unresolved"), "why": resolved.why}
                              for c in conflicts]
            if resolved.failure is not None:
                return MergeOutcome(contributions=tuple(contributions), conflicts=len(conflicts),
                                    resolution="failed", failure=resolved.failure, detail=resolved.detail)
            changes.update(resolved.files)
        for path, content in changes.items():
            # Two edits that each parse can still merge into a program that does not (or a resolution may).
            problem = syntax_problem(path, content)
            if problem:
                return MergeOutcome(contributions=tuple(contributions), conflicts=len(conflicts),
                                    resolution="failed", failure="syntax", detail=problem)
        changes = {p: c for p, c in changes.items() if a.get(p) != (c.encode() if isinstance(c, str) else c)}
        return MergeOutcome(changes, tuple(contributions), len(conflicts), resolution)


# -- resolvers --------------------------------------------------------------------------------------------
def _side(c: Conflict, side: str) -> str:
    return c.a if side == "a" else c.b


def _better_side(request: MergeRequest) -> tuple[str, str]:
    """The parent that scores better where their changes moved the scores (ties: the better mean score)."""
    a, b = request.a, request.b
    mean = (a.objectives.get("score") or 0.0, b.objectives.get("score") or 0.0)
    side = "a" if (a.moved_sum, mean[0]) >= (b.moved_sum, mean[1]) else "b"
    why = (f"{a.label} sums {a.moved_sum:.4g}, {b.label} {b.moved_sum:.4g} on the {len(request.moved)} "
           "validation instances where the parents differ from the base")
    return side, why


class ScoreResolver:
    """LLM-free: per conflicting hunk, the side of the parent that scores better on the instances touched."""

    name = "builtin"

    def resolve(self, merged: Mapping[str, FileMerge], request: MergeRequest) -> Resolved:
        side, why = _better_side(request)
        files: dict[str, str | bytes | None] = {}
        how: dict[int, str] = {}
        for path, fm in merged.items():
            files[path] = fm.sides[side] if fm.sides else fm.render(lambda c: _side(c, side))
            how.update({c.index: side for c in fm.conflicts})
        return Resolved(files=files, how=how, why=why)


MERGE_SYSTEM = """You merge two improved versions (A and B) of a program that descend from a common base version.
Where both changed the same lines, the file shows a placeholder line `<<CONFLICT N>>`; each conflict is listed
with the base lines and both versions of them. Combine the two improvements: keep what makes each version better
where the other is not, and produce one coherent program.

Reply in exactly this form:
## Diagnosis
What each version's change does and how they combine.
## Change
One sentence: how you resolved the conflicts.
## Edits
One SEARCH/REPLACE block per conflict, each preceded by the file's path on its own line; SEARCH is the
placeholder line exactly as shown, REPLACE the resolved lines:
path/to/file.py
<<<<<<< SEARCH
<<CONFLICT 1>>
=======
the resolved lines
>>>>>>> REPLACE

Resolve every conflict; edit nothing else."""


def _fence(text: str) -> str:
    return "```\n" + (text if text.endswith("\n") or not text else text + "\n") + "```"


def build_merge_prompt(merged: Mapping[str, FileMerge], request: MergeRequest) -> str:
    task = request.task
    sections = [f"# Task: {task.name}", f"Objective: {task.objective or '(not stated)'}"]
    if task.background:
        sections.append(f"Background:\n{task.background}")
    for name, p, other in (("A", request.a, request.b), ("B", request.b, request.a)):
        objectives = ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} -" for k, v in p.objectives.items())
        wins = ", ".join(p.wins[:20]) or "none"
        lines = [f"## Version {name} ({p.label})", f"Validation: {objectives}.",
                 f"Better than {other.label} on: {wins}."]
        if p.reflections:
            lines.append("Its changes since the base (diagnosis | change):\n" +
                         "\n".join(f"- {r}" for r in p.reflections))
        sections.append("\n".join(lines))
    if request.lessons:
        sections.append(f"## Lessons from earlier proposals\n{request.lessons}")
    for path, fm in sorted(merged.items()):
        sections.append(f"## File {path} (merged, with conflict placeholders)\n{_fence(fm.with_placeholders())}")
        for c in fm.conflicts:
            sections.append(f"### CONFLICT {c.index} in {path}\nbase ({request.base_label}):\n{_fence(c.base)}\n"
                            f"A ({request.a.label}):\n{_fence(c.a)}\nB ({request.b.label}):\n{_fence(c.b)}")
    return "\n\n".join(sections)


class LLMResolver:
    """An LLM resolves the conflicts with edits on the placeholder lines; failures get repair turns."""

    name = "llm"

    def __init__(self, llm: LLM, repair_turns: int = 2) -> None:
        self.llm, self.repair_turns = llm, repair_turns

    def resolve(self, merged: Mapping[str, FileMerge], request: MergeRequest) -> Resolved:
        whole = {p: fm for p, fm in merged.items() if fm.conflicts[0].whole_file}
        textual = {p: fm for p, fm in merged.items() if p not in whole}
        # Binary, deleted or both-created files have no lines to combine: the better parent's version is kept.
        fallback = ScoreResolver().resolve(whole, request) if whole else Resolved()
        if not textual:
            return fallback
        files = {p: fm.with_placeholders() for p, fm in textual.items()}
        messages = [{"role": "system", "content": MERGE_SYSTEM},
                    {"role": "user", "content": build_merge_prompt(textual, request)}]
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
            result = apply_reply(text, dict(files), request.task.is_mutable)
            problems = [] if result.ok else [result.feedback()]
            resolved = {**files, **result.changes} if result.ok else files
            left = [c for fm in textual.values() for c in fm.conflicts
                    if f"<<CONFLICT {c.index}>>" in (resolved.get(c.path) or "")]
            if result.ok and left:
                problems.append("Still unresolved: " + ", ".join(f"<<CONFLICT {c.index}>> in {c.path}"
                                                                 for c in left) + ". Replace every placeholder.")
            if not problems:
                how = {c.index: "llm" for fm in textual.values() for c in fm.conflicts}
                return Resolved(files={**fallback.files, **{p: resolved[p] for p in textual}},
                                how={**fallback.how, **how}, why=_change_line(text))
            detail = f"after {turn + 1} turn(s): " + "\n".join(problems)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": "Your resolution could not be used:\n" + "\n".join(problems) +
                          "\nReply again in the same form, with one SEARCH/REPLACE block per placeholder."}]
        return Resolved(failure="conflict_unresolved", detail=detail)


def _change_line(reply: str) -> str:
    """The reply's Change section (why the conflicts were resolved so), for the record."""
    return reply_section(reply, "Change")[:300]
