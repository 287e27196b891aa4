"""The checks every proposal passes before it is committed, whatever proposed it: it changes something, only
mutable files at safe paths, Python that parses. (Duplicates are checked by the engine, which knows the trees.)
A proposer may check the same things earlier (the reflective one does, to give the LLM a repair turn); these
are the engine's own, so a proposer that forgets cannot get a forbidden edit committed."""

from __future__ import annotations

import ast
from collections.abc import Mapping

from ..patches import check_path
from ..task import Task


def problem(task: Task, changes: Mapping[str, str | bytes | None]) -> tuple[str, str] | None:
    """(failure kind, detail) when the changes may not be committed, else None."""
    if not changes:
        return "noop", "the proposal changes no file"
    unsafe = {p: why for p in changes if (why := check_path(p))}
    if unsafe:
        return "not_mutable", "; ".join(f"{p}: {why}" for p, why in sorted(unsafe.items()))
    frozen = sorted(p for p in changes if not task.is_mutable(p))
    if frozen:
        return "not_mutable", (f"the proposal changes files that are not mutable: {', '.join(frozen)} (mutable: "
                               f"{', '.join(task.mutable)})")
    for path, content in sorted(changes.items()):
        if content is None or not path.endswith(".py"):
            continue
        try:
            # The bytes the child will hold, parsed as Python reads a file: a UTF-8 byte-order mark is allowed
            # there (parsed as text it is "invalid non-printable character U+FEFF").
            ast.parse(content.encode("utf-8") if isinstance(content, str) else content, filename=path)
        except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
            return "syntax", f"{path}: {type(exc).__name__}: {exc}"
    return None
