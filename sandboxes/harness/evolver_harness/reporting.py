"""The `report` helper a task's judge returns. Pure data, no harness state."""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing costs ~15 ms of start-up in every sandbox process
if TYPE_CHECKING:
    from typing import Any


def report(
    instance: str,
    score: float,
    feedback: str = "",
    *,
    invalid: bool = False,
    artifacts: dict[str, Any] | None = None,
    **objectives: float,
) -> dict[str, Any]:
    """Build the verdict of one instance.

    `score` is the primary score (higher is better by convention of the task's first objective);
    `objectives` are extra named numbers (e.g. gap_pct=12.5); `feedback` is the actionable side
    information; `invalid=True` marks an output the judge rejected (infeasible, wrong type).
    """
    if not isinstance(instance, str):
        raise TypeError(f"report(): instance must be a str, got {type(instance).__name__}")
    values = {"score": score, **objectives}
    checked: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"report(): {name} must be a number, got {type(value).__name__}")
        checked[name] = float(value)
    bad = [n for n, v in checked.items() if not math.isfinite(v)]
    return {
        "instance": instance,
        "score": checked.pop("score"),
        "objectives": checked,
        "feedback": str(feedback),
        "invalid": bool(invalid or bad),
        "nonfinite": bad,
        "artifacts": artifacts or {},
    }


_candidate_dir = ""


def candidate_dir() -> str:
    """In the trusted harness: the folder of the candidate under evaluation, to read its files as text (e.g. to
    measure code size). Never import from it here; candidate code runs only in the untrusted child. Set before
    the evaluator module is loaded, so a snapshot taken at import time precedes any candidate process."""
    return _candidate_dir
