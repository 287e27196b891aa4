"""Applying an LLM reply's edits to a parent candidate's files, producing the child's changes or precise errors.

Data in, data out: `apply_reply(reply, files, is_mutable)` returns a frozen PatchResult; nothing touches disk or
git (the caller hands `changes`, encoded, to RunRepo.commit_changes). Matching is by content, never by line
number alone: exact first, then tolerant of trailing whitespace and of a uniform indentation offset (the
replacement is re-indented by the same offset). An ambiguous match is never applied. Every problem of a reply
is collected, so one repair turn can fix them all; `PatchResult.feedback()` is that turn's message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

import libcst

from .patch_parsing import Edit, ParsedReply, ParseError, parse_reply, truncated

__all__ = ["ERROR_KINDS", "Edit", "ParseError", "ParsedReply", "PatchError", "PatchResult", "apply_reply",
           "check_path", "parse_reply", "truncated"]

ERROR_KINDS = ("parse", "no_match", "ambiguous", "not_mutable", "bad_path", "syntax", "create_exists")
_PREVIEW_LINES = 4  # first lines of a SEARCH text quoted back
_REGION_LINES = 10  # lines of the closest region quoted back
_RATIO_BUDGET = 64  # windows compared in full when looking for the closest region
_HINTS = {
    "parse": "Format: the file path on its own line, then '<<<<<<< SEARCH', the current lines, '=======', the new "
             "lines, '>>>>>>> REPLACE'.",
    "no_match": "SEARCH text (a diff's context and removed lines) must copy the file's current lines; indentation "
                "and trailing spaces may differ.",
    "ambiguous": "Add neighbouring lines to the SEARCH section until it occurs once.",
}


@dataclass(frozen=True)
class PatchError:
    kind: str  # one of ERROR_KINDS
    path: str  # "" when the problem is not tied to one file
    message: str  # self-contained: names the file and the reply line


@dataclass(frozen=True)
class PatchResult:
    """changes: the files the child changes (None: deleted); never a file with an error, so a half-edited file
    cannot be committed by accident. noop: the edits applied cleanly but change nothing."""

    changes: dict[str, str | None]
    errors: tuple[PatchError, ...]
    noop: bool
    blocks: int  # edits found in the reply (blocks, diff hunks, whole files, deletions)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.noop and bool(self.changes)

    def feedback(self) -> str:
        """One message for the LLM's repair turn: what happened, every problem, and how to fix each kind."""
        if self.ok:
            return f"Applied {self.blocks} edit(s); changed {', '.join(sorted(self.changes))}."
        if not self.errors:
            return ("Your edits apply, but every file stays exactly as it was: nothing changed. Send edits whose "
                    "new lines differ from the current ones.")
        n = len(self.errors)
        out = [f"None of your edits were applied: {n} problem{'s' if n > 1 else ''}. Fix all of them and send the "
               "complete set of edits again, against the original files."]
        out += [f"{i}. [{e.kind}] {e.message}" for i, e in enumerate(self.errors, 1)]
        kinds = {e.kind for e in self.errors}
        out += [hint for kind, hint in _HINTS.items() if kind in kinds]
        return "\n".join(out)


def check_path(path: str) -> str | None:
    """Why a path may not be written (None: fine). Paths are relative to the candidate root, '/'-separated."""
    if "\\" in path:
        return "backslashes are not allowed"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "control characters (newlines, tabs, NUL) are not allowed"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or path.startswith("~"):
        return "absolute paths are not allowed"
    parts = path.split("/")
    if ".." in parts:
        return "'..' is not allowed"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path components are not allowed"
    return None


# -- lines -----------------------------------------------------------------------------------------------------

def _split(text: str) -> tuple[list[str], str, bool]:
    """Lines without endings, the file's newline ("\\r\\n" kept for CRLF files) and whether it ends with one."""
    nl = "\r\n" if "\r\n" in text else "\n"
    trailing = text.endswith(nl) or not text
    body = text[: -len(nl)] if text.endswith(nl) else text
    return (body.split(nl) if body else []), nl, trailing


def _join(lines: list[str], nl: str, trailing: bool) -> str:
    return nl.join(lines) + (nl if trailing and lines else "")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _common_indent(lines: Sequence[str]) -> str:
    """The leading whitespace every non-blank line shares (character by character: tabs and spaces differ)."""
    indents = [_indent(ln) for ln in lines if ln.strip()]
    if not indents:
        return ""
    common = min(indents, key=len)
    for ind in indents:
        while not ind.startswith(common):
            common = common[:-1]
    return common


def _numbered(lines: Sequence[str], first: int) -> str:
    return "\n".join(f"  {first + k:>4} | {ln}" for k, ln in enumerate(lines))


def _ranges(starts: Sequence[int], n: int) -> str:
    return ", ".join(f"{s + 1}-{s + n}" if n > 1 else f"{s + 1}" for s in starts)


# -- matching --------------------------------------------------------------------------------------------------

def _find_exact(lines: list[str], search: Sequence[str]) -> list[int]:
    n, first = len(search), search[0]
    return [i for i in range(len(lines) - n + 1) if lines[i] == first and lines[i:i + n] == list(search)]


def _find_loose(lines: list[str], search: Sequence[str]) -> list[tuple[int, str]]:
    """Matches that ignore trailing whitespace and one indentation offset for the whole window: (start, the
    window's common indentation). Relative indentation must agree: in Python it is structure."""
    s_ind = _common_indent(search)
    key = [s[len(s_ind):].rstrip() if s.strip() else "" for s in search]
    anchor = next((k for k, s in enumerate(key) if s), None)
    if anchor is None:  # only blank lines: tolerance would match every blank run
        return []
    n, hits = len(search), []
    for i in range(len(lines) - n + 1):
        if lines[i + anchor].strip() != key[anchor].strip():
            continue
        window = lines[i:i + n]
        w_ind = _common_indent(window)
        if all((not w.strip()) == (not k) and (not k or w[len(w_ind):].rstrip() == k)
               for w, k in zip(window, key, strict=True)):
            hits.append((i, w_ind))
    return hits


def _reindent(replace: Sequence[str], s_ind: str, w_ind: str) -> list[str]:
    """Move the replacement from the SEARCH text's indentation to the matched region's."""
    out = []
    for line in replace:
        if not line.strip():
            out.append("")
        elif line.startswith(s_ind):
            out.append(w_ind + line[len(s_ind):])
        else:  # less indented than the SEARCH text: keep the difference, relative to the region
            lost = len(s_ind) - len(_indent(line))
            out.append(w_ind[: max(0, len(w_ind) - lost)] + line.lstrip())
    return out


def _closest(lines: list[str], search: Sequence[str]) -> tuple[int, float]:
    """The window of len(search) lines most similar to the search text (stripped lines, difflib's ratio).

    ratio() costs quadratic time per window, so windows are ranked by a bound first: the characters they share
    with the search text as multisets (what quick_ratio computes, here updated line by line as the window
    slides). ratio() never exceeds that bound, so visiting windows by decreasing bound and stopping once the
    bound falls to the best ratio found is exact; _RATIO_BUDGET caps the visits on files where every window
    is about equally (dis)similar."""
    n = max(1, len(search))
    rows = [ln.strip() + "\n" for ln in lines]
    target = "".join(s.strip() + "\n" for s in search)
    want = Counter(target)
    counts = [Counter(r) for r in rows]
    window: Counter[str] = Counter()
    size = 0
    for r, c in zip(rows[:n], counts[:n], strict=False):
        window.update(c)
        size += len(r)
    bounds = []
    for i in range(max(1, len(rows) - n + 1)):
        if i:
            window.subtract(counts[i - 1])
            window.update(counts[i + n - 1])
            size += len(rows[i + n - 1]) - len(rows[i - 1])
        shared = sum(min(window[ch], k) for ch, k in want.items())
        bounds.append((2.0 * shared / (size + len(target)), i))
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(target)  # seq2 is the side SequenceMatcher preprocesses once
    best, best_ratio = 0, 0.0
    for bound, i in sorted(bounds, key=lambda b: (-b[0], b[1]))[:_RATIO_BUDGET]:
        if bound <= best_ratio:
            break
        matcher.set_seq1("".join(rows[i:i + n]))
        if (ratio := matcher.ratio()) > best_ratio:
            best, best_ratio = i, ratio
    return best, best_ratio


def _no_match(path: str, edit: Edit, lines: list[str], note: str) -> str:
    preview = [s for s in edit.search if s.strip()][:_PREVIEW_LINES]
    what = "SEARCH text" if edit.source == "block" else "context and removed lines"
    msg = [f"{path}: the {edit.describe()} matches nothing{note}. Its {what} begin{'s' * (what[0] == 'S')}:",
           *(f"       | {s}" for s in preview)]
    start, ratio = _closest(lines, edit.search)
    if lines and ratio > 0:
        region = lines[start:start + min(len(edit.search), _REGION_LINES)]
        end = start + len(region)
        msg.append(f"Closest region of {path} (line{'s' if end > start + 1 else ''} {_ranges([start], end - start)}, "
                   f"{int(ratio * 100)}% similar):")
        msg.append(_numbered(region, start + 1))
    else:
        msg.append(f"Nothing in {path} resembles it.")
    return "\n".join(msg)


def _apply_replace(path: str, text: str, edit: Edit, note: str) -> tuple[str | None, PatchError | None]:
    lines, nl, trailing = _split(text)
    search, replace = list(edit.search), list(edit.replace)
    if not search:  # a diff hunk that only adds lines: its line number is all there is
        if edit.hint is None or not 0 <= edit.hint <= len(lines):
            return None, PatchError("no_match", path, f"{path}: the {edit.describe()} has no context or removed "
                                    "lines and no usable line number; include a few unchanged lines around it")
        return _join(lines[:edit.hint] + replace + lines[edit.hint:], nl, trailing), None
    exact = _find_exact(lines, search)
    loose = [] if exact else _find_loose(lines, search)
    starts = exact or [i for i, _ in loose]
    if len(starts) > 1 and edit.hint in starts:  # diff line numbers only break ties, never override content
        starts = [edit.hint]
    if len(starts) > 1:
        how = " (ignoring indentation and trailing whitespace)" if loose else ""
        return None, PatchError("ambiguous", path, f"{path}: the {edit.describe()} matches {len(starts)} places"
                                f"{how}{note}: lines {_ranges(starts, len(search))}; it must match exactly one, "
                                "so nothing was replaced")
    if not starts:
        return None, PatchError("no_match", path, _no_match(path, edit, lines, note))
    i = starts[0]
    if loose:
        w_ind = next(ind for start, ind in loose if start == i)
        replace = _reindent(replace, _common_indent(search), w_ind)
    return _join(lines[:i] + replace + lines[i + len(search):], nl, trailing), None


def _syntax_error(path: str, text: str) -> str | None:
    """libcst decides; CPython's own parser, when it agrees that the text is broken, names the line, because
    libcst's native parser can report a later token (an unclosed '(' is reported where the file ends)."""
    try:
        libcst.parse_module(text)
    except libcst.ParserSyntaxError as e:
        line, cst = e.raw_line, f"libcst: line {e.raw_line}: {e.message}"
        detail = cst
        try:
            compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as py:
            if py.lineno:
                line, detail = py.lineno, f"{py.msg} ({cst})"
        except ValueError:  # e.g. a NUL byte: libcst's report stands
            pass
        lines = text.splitlines()
        shown = f"\n{_numbered([lines[line - 1]], line)}" if 1 <= line <= len(lines) else ""
        return f"{path}: not valid Python after the edits: line {line}: {detail}{shown}"
    return None


# -- the reply ---------------------------------------------------------------------------------------------------

def apply_reply(reply: str, files: dict[str, str], is_mutable: Callable[[str], bool], *,
                globs: Sequence[str] = ()) -> PatchResult:
    """Parse `reply`, apply its edits in order to the parent's `files` (path -> text) and validate the child.

    `is_mutable(path)` says which files the task lets the proposer edit; `globs` names them in messages (when
    empty, the globs of a bound `Task.is_mutable` are used)."""
    globs = tuple(globs) or tuple(getattr(getattr(is_mutable, "__self__", None), "mutable", ()) or ())
    parsed = parse_reply(reply)
    # (reply line, error): reported in reply order whatever stage found them; syntax errors (whole files) last
    errors: list[tuple[float, PatchError]] = [(e.line or 0, PatchError("parse", e.path, str(e)))
                                               for e in parsed.errors]
    state: dict[str, str | None] = {}  # touched paths -> current text (None: deleted or absent)
    failed = {e.path for e in parsed.errors if e.path}  # a file with any error stays out of `changes`
    applied: dict[str, int] = {}
    rejected: set[str] = set()

    def fail(error: PatchError, line: float) -> None:
        errors.append((line, error))
        failed.add(error.path)

    for edit in parsed.edits:
        path = edit.path
        if path in rejected:
            continue  # one message per bad path, not one per block
        if (why := check_path(path)) is not None:
            rejected.add(path)
            fail(PatchError("bad_path", path, f"{path}: rejected path ({edit.describe()}): {why}; use a path "
                            "relative to the candidate's root with '/' separators"), edit.line)
            continue
        if not is_mutable(path):
            rejected.add(path)
            allowed = ", ".join(repr(g) for g in globs) or ", ".join(sorted(p for p in files if is_mutable(p)))
            fail(PatchError("not_mutable", path, f"{path}: not editable in this task ({edit.describe()}); edits "
                            f"may only touch files matching {allowed or 'nothing'}"), edit.line)
            continue
        current = state[path] if path in state else files.get(path)
        note = " (line numbers after the earlier edits of this file)" if applied.get(path) else ""
        if edit.op == "delete":
            if current is None:
                fail(PatchError("no_match", path, f"{path}: the {edit.describe()} deletes a file that does not "
                                "exist"), edit.line)
                continue
            new: str | None = None
        elif edit.op == "create":
            if current is not None:
                fail(PatchError("create_exists", path, f"{path}: the {edit.describe()} creates a file that already "
                                f"exists ({len(_split(current)[0])} lines); to change it, edit its current lines "
                                "(in a SEARCH/REPLACE block: put them in the SEARCH section)"), edit.line)
                continue
            new = _join(list(edit.replace), "\n", True)
        elif edit.op == "write":
            new = _join(list(edit.replace), "\n", True)
        elif current is None:
            mine = ", ".join(sorted(p for p in files if is_mutable(p))) or "none"
            fail(PatchError("no_match", path, f"{path}: the {edit.describe()} edits a file that does not exist "
                            f"(files you may edit: {mine}); to create it, leave the SEARCH section empty"), edit.line)
            continue
        else:
            new, error = _apply_replace(path, current, edit, note)
            if error is not None:
                fail(error, edit.line)
                continue
        state[path] = new
        applied[path] = applied.get(path, 0) + 1

    changes = {p: text for p, text in state.items() if p not in failed and text != files.get(p)}
    for path, text in list(changes.items()):
        if text is not None and path.endswith(".py") and (msg := _syntax_error(path, text)) is not None:
            fail(PatchError("syntax", path, msg), float("inf"))
            del changes[path]
    noop = not errors and not changes
    ordered = tuple(e for _, e in sorted(errors, key=lambda pair: pair[0]))
    return PatchResult(changes=changes, errors=ordered, noop=noop, blocks=len(parsed.edits))
