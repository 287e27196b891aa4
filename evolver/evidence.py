"""Side information condensed to text under a size budget: what a reader (human or LLM) needs first.

Failures come first, worst status first; identical failures are folded into one entry with a count and
the instances it hit; long text keeps its head and tail; profile hot spots become a short table.
Everything here is candidate output: callers fence it as untrusted data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .evaluation import InstanceResult

SEVERITY = {"sandbox_error": 0, "evaluator_error": 1, "crashed": 2, "memory": 3, "timeout": 4,
            "output_limit": 5, "no_output": 6, "error": 7, "missing": 8, "failed": 9, "invalid": 10,
            "skipped": 11, "ok": 99}
_ADDR = re.compile(r"0x[0-9a-fA-F]{6,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Make candidate text safe to show: control characters (ANSI escapes included) become visible."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def clip(text: str, limit: int) -> str:
    """Head and tail of `text` within `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    head, tail = text[: keep * 2 // 3], text[-(keep // 3) :]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters cut ...]\n{tail}"


@dataclass(frozen=True)
class FailureGroup:
    status: str
    text: str
    instances: tuple[str, ...]


def _fold_key(r: InstanceResult) -> str:
    # Tracebacks that differ only in object addresses or the instance name are the same failure.
    text = _ADDR.sub("0x…", r.feedback)
    return r.status + "\0" + re.sub(rf"(?<!\w){re.escape(r.instance)}(?!\w)", "<instance>", text)


def group_failures(results: Sequence[InstanceResult]) -> list[FailureGroup]:
    groups: dict[str, list[InstanceResult]] = {}
    for r in results:
        if not r.ok:
            groups.setdefault(_fold_key(r), []).append(r)
    out = [FailureGroup(rs[0].status, rs[0].feedback or "(no feedback)", tuple(x.instance for x in rs))
           for rs in groups.values()]
    out.sort(key=lambda g: (SEVERITY.get(g.status, 50), -len(g.instances)))
    return out


def hot_spot_table(results: Sequence[InstanceResult], top: int = 8) -> str:
    """Cumulative time per candidate function, summed over instances."""
    total: dict[str, list[float]] = {}
    for r in results:
        for row in r.profile:
            agg = total.setdefault(str(row.get("function")), [0.0, 0.0, 0.0])
            agg[0] += float(row.get("ncalls", 0))
            agg[1] += float(row.get("tottime_s", 0.0))
            agg[2] += float(row.get("cumtime_s", 0.0))
    if not total:
        return ""
    rows = sorted(total.items(), key=lambda kv: -kv[1][2])[:top]
    lines = ["cumtime_s  tottime_s      calls  function"]
    lines += [f"{c:9.4f}  {t:9.4f}  {int(n):9d}  {f}" for f, (n, t, c) in rows]
    return "\n".join(lines)


def condense(results: Sequence[InstanceResult], budget: int = 6000, per_item: int = 1500,
             include_ok_feedback: bool = True) -> str:
    """The side information of a batch as text of at most about `budget` characters."""
    parts: list[str] = []
    n_fail = sum(1 for r in results if not r.ok)
    parts.append(f"{len(results)} instances, {n_fail} failed; scores: "
                 + ", ".join(f"{r.instance}={r.score:.4g}" for r in results[:20])
                 + (" ..." if len(results) > 20 else ""))
    for g in group_failures(results):
        who = ", ".join(g.instances[:6]) + (f" and {len(g.instances) - 6} more" if len(g.instances) > 6 else "")
        count = f" x{len(g.instances)}" if len(g.instances) > 1 else ""
        parts.append(f"[{g.status}{count}] {who}\n{clip(g.text.strip(), per_item)}")
    if include_ok_feedback:
        for r in sorted((r for r in results if r.ok and r.feedback.strip()), key=lambda r: r.score):
            parts.append(f"[ok] {r.instance} (score {r.score:.4g})\n{clip(r.feedback.strip(), per_item // 2)}")
    table = hot_spot_table(results)
    if table:
        table = "Profile hot spots (candidate files, summed over instances):\n" + table
        budget -= len(table)  # the profile is always kept: it is the cheapest pointer to slow code
    out, used = [], 0
    for p in parts:
        if used + len(p) > budget:
            out.append(f"[... {len(parts) - len(out)} more entries cut to stay within {budget} characters ...]")
            break
        out.append(p)
        used += len(p) + 2
    if table:
        out.append(table)
    return sanitize("\n\n".join(out))
