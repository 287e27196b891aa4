"""Where two changes of the same files meet: the line ranges a change touches, and how many hunks of one diff
touch hunks of another (0: git merges them cleanly). Pure functions over file contents, used to rank merge pairs
and to record where each hunk of a merge came from."""

from __future__ import annotations

import difflib
from collections.abc import Mapping


def text_of(data: bytes | None) -> str | None:
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


def touch(r: tuple[int, int], s: tuple[int, int]) -> bool:
    """git merges two changes cleanly only when unchanged lines separate them: touching counts as overlap."""
    return r[0] <= s[1] and s[0] <= r[1]


def overlapping_hunks(base: Mapping[str, bytes], a: Mapping[str, bytes], b: Mapping[str, bytes]) -> int:
    """How many hunks of A's diff against the base touch a hunk of B's (0: the diffs merge cleanly)."""
    count = 0
    for path in set(a) | set(b) | set(base):
        b0, fa, fb = base.get(path), a.get(path), b.get(path)
        if fa in (b0, fb) or fb == b0:
            continue
        t0, ta, tb = text_of(b0) or "", text_of(fa), text_of(fb)
        if ta is None or tb is None:
            count += 1
            continue
        hb = changed_ranges(t0, tb)
        count += sum(any(touch(r, s) for s in hb) for r in changed_ranges(t0, ta))
    return count
