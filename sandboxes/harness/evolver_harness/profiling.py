"""cProfile hot spots limited to candidate files: where the candidate's own time goes."""

from __future__ import annotations

import cProfile
import pstats

TOP = 12


def hot_spots(profiler: cProfile.Profile, candidate_dir: str, top: int = TOP) -> list[dict]:
    """Top functions of candidate files by cumulative time, as plain rows: where (`file` relative to the
    candidate root, `line` of the def, `name`), `function` as the one display string of the three, and times."""
    stats = pstats.Stats(profiler)
    cand = candidate_dir.rstrip("/") + "/"
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not filename.startswith(cand):
            continue
        rel = filename[len(cand) :]
        rows.append(
            {
                "function": f"{rel}:{line}({func})",
                "file": rel,
                "line": line,
                "name": func,
                "ncalls": nc,
                "primitive_calls": cc,
                "tottime_s": round(tt, 6),
                "cumtime_s": round(ct, 6),
            }
        )
    rows.sort(key=lambda r: -r["cumtime_s"])
    return rows[:top]
