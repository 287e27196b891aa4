"""Side information as records (`Evidence`), and as text under a size budget for a reader (human or LLM).

`gather` folds a batch's results into an `Evidence` record: the scores, failures grouped (identical failures
folded into one entry with a count and the instances it hit, worst status first) with their structured
traceback frames, the feedback of passing instances, and the profile hot spots of candidate files. Proposers
read the record; `render` (and `condense`, both at once) make text of it where a person or an LLM reads it:
long text keeps its head and tail, hot spots become a short table. Everything here is candidate output:
callers fence it as untrusted data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .evaluation import InstanceResult

SEVERITY = {"sandbox_error": 0, "evaluator_error": 1, "crashed": 2, "memory": 3, "timeout": 4,
            "output_limit": 5, "no_output": 6, "error": 7, "missing": 8, "failed": 9, "invalid": 10,
            "skipped": 11, "ok": 99}
HOT_SHARE = 0.05  # a hot spot takes at least this share of the candidate's measured CPU time...
HOT_MIN_S = 0.002  # ...and at least this long, summed over the batch
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
class Frame:
    """A traceback frame in a candidate file (path relative to the candidate's root)."""

    file: str
    line: int
    function: str


@dataclass(frozen=True)
class FailureGroup:
    status: str
    text: str
    instances: tuple[str, ...]
    frames: tuple[Frame, ...] = ()  # of the first instance of the group, outermost first


@dataclass(frozen=True)
class HotSpot:
    """Time spent in one candidate function, summed over instances (cProfile)."""

    function: str  # as shown: "path:line(name)"
    ncalls: float
    tottime_s: float
    cumtime_s: float
    file: str | None = None  # structured location (None in results stored by older harnesses)
    line: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class Evidence:
    scores: tuple[tuple[str, str, float], ...] = ()  # (instance, status, score)
    failures: tuple[FailureGroup, ...] = ()
    passing_feedback: tuple[tuple[str, float, str], ...] = ()  # (instance, score, feedback), lowest score first
    hot_spots: tuple[HotSpot, ...] = ()  # by cumulative time, largest first

    def named_functions(self) -> set[str]:
        """Names of candidate functions the evidence points at: failing frames, then hot spots."""
        return {f.function for g in self.failures for f in g.frames} | {h.name for h in self.hot_spots if h.name}


def frames_of(result: InstanceResult) -> tuple[Frame, ...]:
    out = []
    for f in result.frames:
        try:
            out.append(Frame(str(f["file"]), int(f["line"]), str(f["function"])))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed frame says nothing
    return tuple(out)


def _fold_key(r: InstanceResult) -> str:
    # Tracebacks that differ only in object addresses or the instance name are the same failure.
    text = _ADDR.sub("0x…", r.feedback)
    return r.status + "\0" + re.sub(rf"(?<!\w){re.escape(r.instance)}(?!\w)", "<instance>", text)


def group_failures(results: Sequence[InstanceResult]) -> list[FailureGroup]:
    groups: dict[str, list[InstanceResult]] = {}
    for r in results:
        if not r.ok:
            groups.setdefault(_fold_key(r), []).append(r)
    out = [FailureGroup(rs[0].status, rs[0].feedback or "(no feedback)", tuple(x.instance for x in rs),
                        frames_of(rs[0])) for rs in groups.values()]
    out.sort(key=lambda g: (SEVERITY.get(g.status, 50), -len(g.instances)))
    return out


def hot_spots(results: Sequence[InstanceResult], top: int = 8) -> tuple[HotSpot, ...]:
    """Candidate functions by cumulative time, summed over instances; only those that matter: at least
    HOT_SHARE of the instances' CPU time (when measured) and HOT_MIN_S in all (a 0.4 ms function is no lead)."""
    total: dict[str, list[float]] = {}
    where: dict[str, tuple[str | None, int | None, str | None]] = {}
    for r in results:
        for row in r.profile:
            key = str(row.get("function"))
            agg = total.setdefault(key, [0.0, 0.0, 0.0])
            agg[0] += float(row.get("ncalls", 0) or 0)
            agg[1] += float(row.get("tottime_s", 0.0) or 0.0)
            agg[2] += float(row.get("cumtime_s", 0.0) or 0.0)
            line = row.get("line")
            where.setdefault(key, (row.get("file"), line if isinstance(line, int) else None, row.get("name")))
    cpu = sum(float((r.usage or {}).get("cpu_s") or 0.0) for r in results)
    floor = max(HOT_MIN_S, HOT_SHARE * cpu)
    rows = sorted(((f, v) for f, v in total.items() if v[2] >= floor), key=lambda kv: -kv[1][2])[:top]
    return tuple(HotSpot(f, n, t, c, *where[f]) for f, (n, t, c) in rows)


def hot_spot_text(spots: Sequence[HotSpot]) -> str:
    if not spots:
        return ""
    lines = ["cumtime_s  tottime_s      calls  function"]
    lines += [f"{h.cumtime_s:9.4f}  {h.tottime_s:9.4f}  {int(h.ncalls):9d}  {h.function}" for h in spots]
    return "\n".join(lines)


def hot_spot_table(results: Sequence[InstanceResult], top: int = 8) -> str:
    """Cumulative time per candidate function, summed over instances, as a table."""
    return hot_spot_text(hot_spots(results, top))


def gather(results: Sequence[InstanceResult]) -> Evidence:
    passing = sorted((r for r in results if r.ok and r.feedback.strip()), key=lambda r: r.score)
    return Evidence(scores=tuple((r.instance, r.status, r.score) for r in results),
                    failures=tuple(group_failures(results)),
                    passing_feedback=tuple((r.instance, r.score, r.feedback) for r in passing),
                    hot_spots=hot_spots(results))


def condense(results: Sequence[InstanceResult], budget: int = 6000, per_item: int = 1500,
             include_ok_feedback: bool = True) -> str:
    """The side information of a batch as text of at most about `budget` characters."""
    return render(gather(results), budget, per_item, include_ok_feedback)


def render(ev: Evidence, budget: int = 6000, per_item: int = 1500, include_ok_feedback: bool = True) -> str:
    """An `Evidence` record as text of at most about `budget` characters (failures first)."""
    parts: list[str] = []
    n_fail = sum(1 for _, status, _ in ev.scores if status != "ok")
    parts.append(f"{len(ev.scores)} instances, {n_fail} failed; scores: "
                 + ", ".join(f"{i}={score:.4g}" for i, _, score in ev.scores[:20])
                 + (" ..." if len(ev.scores) > 20 else ""))
    for g in ev.failures:
        who = ", ".join(g.instances[:6]) + (f" and {len(g.instances) - 6} more" if len(g.instances) > 6 else "")
        count = f" x{len(g.instances)}" if len(g.instances) > 1 else ""
        parts.append(f"[{g.status}{count}] {who}\n{clip(g.text.strip(), per_item)}")
    if include_ok_feedback:
        for instance, score, feedback in ev.passing_feedback:
            parts.append(f"[ok] {instance} (score {score:.4g})\n{clip(feedback.strip(), per_item // 2)}")
    table = hot_spot_text(ev.hot_spots)
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
