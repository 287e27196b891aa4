"""Parsing an LLM reply into edits per file: SEARCH/REPLACE blocks, unified diffs, or whole fenced files.

Pure functions over text. The reply is read line by line in one pass, so a SEARCH block and a diff keep their
relative order and the content of a block is never mistaken for a diff (or the reverse). Fenced whole files are
considered only when the reply holds neither blocks nor diffs: a reply that edits with blocks often also shows
illustrative code in fences, which must not overwrite anything. `evolver.patches` applies the edits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*?)\s*$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# One token without whitespace or characters that never occur in the paths we accept; "/", "\\" and ".." pass,
# so that a bad path reaches validation and is reported as such instead of as a missing path.
_PATH_TOKEN = re.compile(r"^[^\s`'\"<>|*?,;()\[\]{}]+$")
_DEV_NULL = "/dev/null"


class ParseError(ValueError):
    """The reply's structure cannot be read: where (1-based reply line; None: the whole reply) and what to write."""

    def __init__(self, line: int | None, expected: str, found: str, path: str = "") -> None:
        self.line, self.expected, self.found, self.path = line, expected, found, path
        where = f"reply line {line}: " if line is not None else "reply: "
        super().__init__(f"{where}expected {expected}, found {found}")


@dataclass(frozen=True)
class Edit:
    """One edit of one file. Lines are stored without line endings; the file's own endings are kept on apply.

    op: "replace" (search -> replace), "create" (replace is the content; the file must not exist),
        "write" (whole file: replace is the content; creates or overwrites), "delete".
    source: "block" (SEARCH/REPLACE), "diff" (unified diff hunk), "file" (fenced whole file); for messages.
    hint: diff hunks only, the 0-based index where the hunk's old lines start in the file as left by the
        previous hunks of the same diff; it breaks ties between equal matches, nothing more.
    """

    path: str
    op: str
    search: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()
    line: int = 0
    source: str = "block"
    hint: int | None = None

    def describe(self) -> str:
        what = {"block": "SEARCH/REPLACE block", "diff": "diff hunk", "file": "file block"}[self.source]
        return f"{what} at reply line {self.line}"


@dataclass(frozen=True)
class ParsedReply:
    edits: tuple[Edit, ...]
    errors: tuple[ParseError, ...]


def _lines(reply: str) -> list[str]:
    # CRLF or lone CR from an API or a pasted file must not leave "\r" in search lines.
    return reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _show(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= 60 else line[:57] + "...")


def path_of_line(line: str) -> str | None:
    """The path a line names on its own: `x.py`, x.py:, ### x.py, **x.py**; leading "./" dropped.

    A decorated word without '.' or '/' ("## Edits", "Changes:") is a heading, not a path; a bare one
    ("Makefile") is taken as a path, and validation says so if no such file may be edited."""
    bare = line.strip().strip("`")
    text = line.strip().lstrip("#").strip()
    for wrap in ("**", "`", "*"):
        if len(text) > 2 * len(wrap) and text.startswith(wrap) and text.endswith(wrap):
            text = text[len(wrap):-len(wrap)].strip()
    text = text.rstrip(":").strip()
    if len(text) > 2 and text[0] == text[-1] == "`":
        text = text[1:-1]
    if not _PATH_TOKEN.match(text) or not any(c.isalnum() for c in text):
        return None
    if text != bare and "." not in text and "/" not in text:
        return None
    while text.startswith("./"):
        text = text[2:]
    return text or None


def _fence_path(info: str) -> str | None:
    """The path in a fence's info string ("python dispatch.py", "dispatch.py"): a token with a '.' or '/'."""
    for token in info.split()[::-1]:
        token = token.split("=", 1)[-1].strip("\"'")  # title="x.py" / path=x.py
        if ("." in token or "/" in token) and (path := path_of_line(token)):
            return path
    return None


def _closes(line: str, opener: str) -> bool:
    m = _FENCE.match(line)
    return bool(m) and not m.group(2) and m.group(1)[0] == opener[0] and len(m.group(1)) >= len(opener)


def _block_path(lines: list[str], i: int, last_replace: int, last_path: str) -> str | None:
    """The path of the SEARCH marker at line i: the nearest non-blank line above it (through one fence opener),
    or the previous block's path when this block follows that block's REPLACE marker directly."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0 and (m := _FENCE.match(lines[j])):
        if path := _fence_path(m.group(2)):
            return path
        j -= 1
        while j >= 0 and not lines[j].strip():
            j -= 1
    if j < 0:
        return None
    if j == last_replace:
        return last_path or None
    if _SEARCH.match(lines[j]) or _DIVIDER.match(lines[j]) or _REPLACE.match(lines[j]) or _FENCE.match(lines[j]):
        return None
    return path_of_line(lines[j])


def _parse_block(lines: list[str], i: int, path: str | None) -> tuple[Edit | ParseError, int]:
    """The block whose SEARCH marker is line i: an edit or a ParseError, and the index to resume at."""
    start = i + 1
    sections: list[list[str]] = [[], []]
    part, k = 0, i + 1
    while k < len(lines):
        line = lines[k]
        if _SEARCH.match(line):  # a new block before this one ended: report it, resume at the new one
            want = "'=======' to end the SEARCH section" if part == 0 else "'>>>>>>> REPLACE' to end the block"
            return ParseError(k + 1, f"{want} opened on line {start}", "another '<<<<<<< SEARCH'", path or ""), k
        if part == 0 and _DIVIDER.match(line):
            part = 1
        elif part == 1 and _REPLACE.match(line):
            break
        else:
            sections[part].append(line)
        k += 1
    else:
        want = ("'=======' and '>>>>>>> REPLACE'" if part == 0 else "'>>>>>>> REPLACE'")
        return ParseError(start, f"{want} to close the block opened on this line", "the end of the reply",
                          path or ""), len(lines)
    if path is None:
        above = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        found = f"{_show(above)}" if above else "nothing above it"
        return ParseError(start, "the file path on its own line just before '<<<<<<< SEARCH'", found), k + 1
    search, replace = sections
    if not any(s.strip() for s in search):
        return Edit(path, "create", (), tuple(replace), start, "block"), k + 1
    return Edit(path, "replace", tuple(search), tuple(replace), start, "block"), k + 1


def _diff_path(raw: str, prefix: str) -> str:
    path = raw.split("\t", 1)[0].strip()  # "--- a/x.py<TAB>2024-01-01 ..." carries a timestamp
    if path == _DEV_NULL:
        return path
    if prefix and path.startswith(prefix):
        path = path[len(prefix):]
    return path_of_line(path) or path  # unusual characters: kept, so validation names the path


def _parse_diff(lines: list[str], i: int) -> tuple[list[Edit], list[ParseError], int]:
    """The file diff whose '---' line is line i: its edits (one per hunk), errors, and the index to resume at."""
    old_raw, new_raw = lines[i][4:], lines[i + 1][4:]
    # git style (a/ b/ prefixes) is stripped only when the diff uses it, so a real folder "a/" survives.
    old_git, new_git = old_raw.startswith("a/"), new_raw.startswith("b/")
    git_style = (old_git or new_git) and (old_git or old_raw.startswith(_DEV_NULL)) and \
        (new_git or new_raw.startswith(_DEV_NULL))
    old = _diff_path(old_raw, "a/" if git_style else "")
    new = _diff_path(new_raw, "b/" if git_style else "")
    start, k = i + 1, i + 2
    hunks: list[tuple[int, int | None, list[str], list[str]]] = []
    errors: list[ParseError] = []
    while k < len(lines) and lines[k].startswith("@@"):
        m = _HUNK.match(lines[k])
        hint = None
        if m:
            old_start, old_count = int(m.group(1)), int(m.group(2) or 1)
            hint = old_start - 1 if old_count else old_start  # count 0: insertion after line old_start
        header, k = k + 1, k + 1
        search: list[str] = []
        replace: list[str] = []
        while k < len(lines):
            line = lines[k]
            if line.startswith(("@@", "```", "~~~")) or (
                    line.startswith("--- ") and k + 1 < len(lines) and lines[k + 1].startswith("+++ ")):
                break
            if line[:1] not in ("", " ", "-", "+", "\\"):
                break
            if line[:1] in ("", " "):  # context; a blank line is context whose leading space was dropped
                search.append(line[1:])
                replace.append(line[1:])
            elif line[0] == "-":
                search.append(line[1:])
            elif line[0] == "+":
                replace.append(line[1:])
            k += 1
        while search and replace and search[-1] == replace[-1] == "" and lines[k - 1] == "":
            search.pop()  # blank lines between the diff and the prose after it are no context
            replace.pop()
            k -= 1
        hunks.append((header, hint, search, replace))
    if old != _DEV_NULL and new == _DEV_NULL:
        return [Edit(old, "delete", line=start, source="diff")], errors, k
    if not hunks:
        errors.append(ParseError(start + 2, "an '@@ -l,s +l,s @@' hunk header after the '+++' line",
                                 _show(lines[k]) if k < len(lines) else "the end of the reply", new))
        return [], errors, k
    if old == _DEV_NULL:
        content = [ln for _, _, _, rep in hunks for ln in rep]
        return [Edit(new, "create", (), tuple(content), start, "diff")], errors, k
    if old != new and old.removeprefix("a/") == new.removeprefix("b/"):
        old = new = new.removeprefix("b/")  # one side git-style, the other not: the same file all the same
    if old != new:
        errors.append(ParseError(start, "the same path on the '---' and '+++' lines (renames are not supported)",
                                 f"{old!r} and {new!r}", new))
        return [], errors, k
    edits, delta = [], 0
    for header, hint, search, replace in hunks:
        edits.append(Edit(new, "replace", tuple(search), tuple(replace), header, "diff",
                          None if hint is None else hint + delta))
        delta += len(replace) - len(search)
    return edits, errors, k


def _parse_whole_files(lines: list[str]) -> tuple[list[Edit], list[ParseError]]:
    """Fenced code blocks that name their file in the info string or on the non-blank line just above."""
    edits: list[Edit] = []
    errors: list[ParseError] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        path = _fence_path(m.group(2))
        if path is None:
            above = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            named = path_of_line(above)
            path = named if named and ("." in named or "/" in named) else None
        k = i + 1
        while k < len(lines) and not _closes(lines[k], m.group(1)):
            k += 1
        if k == len(lines):
            errors.append(ParseError(i + 1, f"a closing '{m.group(1)}' for the code block opened on this line",
                                     "the end of the reply", path or ""))
            break
        if path is not None:
            edits.append(Edit(path, "write", (), tuple(lines[i + 1:k]), i + 1, "file"))
        i = k + 1
    return edits, errors


def parse_reply(reply: str) -> ParsedReply:
    """Every edit of the reply in order, and every structural problem (parsing goes on after each one that
    leaves the rest readable, so a repair turn can fix them all at once)."""
    lines = _lines(reply)
    edits: list[Edit] = []
    errors: list[ParseError] = []
    last_replace, last_path = -2, ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SEARCH.match(line):
            path = _block_path(lines, i, last_replace, last_path)
            item, nxt = _parse_block(lines, i, path)
            if isinstance(item, Edit):
                edits.append(item)
                last_replace, last_path = nxt - 1, item.path
            else:
                errors.append(item)
            i = nxt
        elif _REPLACE.match(line):
            errors.append(ParseError(i + 1, "a '<<<<<<< SEARCH' block (path line, SEARCH, '=======') before "
                                     "'>>>>>>> REPLACE'", "a REPLACE marker outside any block"))
            i += 1
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            found_edits, found_errors, i = _parse_diff(lines, i)
            edits += found_edits
            errors += found_errors
        elif _HUNK.match(line):
            errors.append(ParseError(i + 1, "'--- a/PATH' and '+++ b/PATH' lines before the hunk header",
                                     _show(line)))
            i += 1
        else:
            i += 1
    if not edits and not errors:
        edits, errors = _parse_whole_files(lines)
        if not edits and not errors:
            errors.append(ParseError(None, "edits: SEARCH/REPLACE blocks after the file path, a unified diff, "
                                     "or the whole file in a code block named by its path", "none"))
    return ParsedReply(tuple(edits), tuple(errors))


def truncated(reply: str) -> bool:
    """Whether the reply is structurally cut off: a SEARCH block or a code fence opened and never closed.
    Fence lines inside a SEARCH/REPLACE block are content (the file may be markdown), not structure."""
    section: int | None = None  # None outside a block, 0 in SEARCH, 1 in REPLACE
    fence: str | None = None
    for line in _lines(reply):
        if section is not None:
            if section == 0 and _DIVIDER.match(line):
                section = 1
            elif section == 1 and _REPLACE.match(line):
                section = None
            continue
        if _SEARCH.match(line):
            section = 0
        elif fence is None and (m := _FENCE.match(line)):
            fence = m.group(1)
        elif fence is not None and _closes(line, fence):
            fence = None
    return section is not None or fence is not None
