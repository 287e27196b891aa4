"""Failures of the task's evaluator (or the sandbox) that stop a run: no candidate can fix them."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import EvolverError
from ..evaluation import InstanceResult


class EvaluatorFault(EvolverError):
    """The task's evaluator (or, for the seed, the sandbox) failed: not something a candidate can fix."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if status == "evaluator_error" else 1  # the task's code: bad input; the sandbox: not


class BudgetTooSmall(EvolverError):
    """The budget cannot even pay for the seed's validation evaluation."""


def evaluator_fault(results: Sequence[InstanceResult], split: str, seed: bool = False) -> EvaluatorFault | None:
    """The task's evaluator failed (prepare or judge raised, a malformed result): its author's bug, which no
    candidate can fix; every further call would be spent on it. For the seed (and candidates already accepted),
    a sandbox that cannot run them is as fatal: nothing can be compared with them."""
    fatal = ("evaluator_error", "sandbox_error") if seed else ("evaluator_error",)
    bad = [r for r in results if r.status in fatal]
    if not bad:
        return None
    first = bad[0]
    names = ", ".join(r.instance for r in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return EvaluatorFault(first.status, f"the task's evaluator failed on {len(bad)} {split} instance(s) ({names}); "
                          "fix the task (its files are unchanged for this run: start a new run once fixed). "
                          f"{first.status} on {first.instance}:\n{first.feedback[-2500:]}")
