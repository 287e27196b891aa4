"""Tracebacks as side information: paths relabelled, frames outside the candidate trimmed.

Absolute sandbox paths change with every evaluation; relabelling them (`candidate/x.py`, `task/y.py`) keeps
feedback stable, so identical failures fold together and cached results read the same. Besides the text, a
failure's frames in candidate files go to the host as records, so that nothing has to parse the text back.
"""

from __future__ import annotations

MAX_FRAMES = 12
MAX_FRAME_RECORDS = 32  # frames of one failure sent as records; a deeper stack keeps its two ends


def clip_frames(frames: list) -> list:
    """At most MAX_FRAME_RECORDS: the outermost two (where the evaluator called in) and the innermost rest."""
    if len(frames) > MAX_FRAME_RECORDS:
        return frames[:2] + frames[-(MAX_FRAME_RECORDS - 2) :]
    return frames


def candidate_frames(exc: BaseException, candidate_dir: str) -> list[dict]:
    """The frames of `exc`'s traceback that run candidate files, outermost first: {"file": path relative to
    the candidate root, "line": int, "function": name}. Empty when no candidate frame is on the traceback."""
    import traceback

    root = candidate_dir.rstrip("/") + "/"
    frames = [{"file": f.filename[len(root) :], "line": int(f.lineno), "function": f.name}
              for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith(root) and f.lineno is not None]
    return clip_frames(frames)


def relabel(text: str, roots: dict[str, str]) -> str:
    """Replace each absolute root directory in `text` by its short label."""
    for root, label in sorted(roots.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(root.rstrip("/") + "/", label + "/")
    return text


def format_exception(
    exc: BaseException, candidate_dir: str, roots: dict[str, str], keep_all: bool = False,
    also_keep: tuple[str, ...] = (),
) -> str:
    """Format `exc` keeping the frames in candidate files (plus the innermost frame for context).

    Frames of the harness itself are always dropped: they are noise to the reflector.
    """
    import traceback  # imported here: relabel() alone is on the harness's start-up path

    summary = traceback.extract_tb(exc.__traceback__)
    keep = (candidate_dir.rstrip("/") + "/", *(p.rstrip("/") + "/" for p in also_keep))
    harness_marker = "/evolver_harness/"
    kept = []
    for i, frame in enumerate(summary):
        if harness_marker in frame.filename:
            continue
        innermost = i == len(summary) - 1
        if keep_all or frame.filename.startswith(keep) or innermost:
            kept.append(frame)
    if len(kept) > MAX_FRAMES:
        kept = kept[:2] + kept[-(MAX_FRAMES - 2) :]
    lines = ["Traceback (most recent call last):\n"]
    lines.extend(traceback.format_list(kept))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return relabel("".join(lines), roots)
