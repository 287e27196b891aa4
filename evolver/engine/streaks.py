"""Runs of bad outcomes in a row, and what they call for: a warning after proposals that give nothing
evaluable, a stop when the LLM keeps failing, when the proposer has run out of ideas, or when the sandbox keeps
failing. The engine reports each outcome here (under its lock) and asks before every iteration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import LOST_REASONS, Defaults
from ..evaluation import InstanceResult
from .budget import StopReason

NOTHING_NEW = ("noop", "duplicate")  # proposals that cost no evaluator call and found nothing


@dataclass
class Streaks:
    failing: int = 0  # proposals in a row that gave no evaluable child
    llm_errors: int = 0  # LLM calls that failed after all retries, in a row
    nothing_new: int = 0  # no-ops and duplicates in a row: the proposer may have run out of ideas
    sandbox_errors: int = 0  # evaluations in a row the sandbox itself failed
    last_llm_error: str = ""  # for the message of the stop they cause

    def accepted(self) -> None:
        self.failing = self.nothing_new = self.sandbox_errors = 0

    def outcome(self, reason: str, merge: bool) -> str | None:
        """After an outcome that was not an acceptance; returns a warning to show, if one is due."""
        self.nothing_new = self.nothing_new + 1 if reason in NOTHING_NEW else 0
        if merge:
            return None  # a merge that produced nothing better is no failing proposal
        self.llm_errors = self.llm_errors + 1 if reason == "llm_error" else 0
        # A worse or duplicate child is a working proposal that lost; the warning is for proposals that yield
        # nothing evaluable (edits that do not apply, no-ops, LLM errors, children that crash).
        self.failing = 0 if reason in LOST_REASONS else self.failing + 1
        if self.failing == Defaults.failing_streak_warning:
            return (f"the last {Defaults.failing_streak_warning} proposals all failed to give a working child "
                    f"(latest: {reason}); check the model, the task's feedback, or `evolver show` of a failed one")
        return None

    def llm_failed(self, detail: str, merge: bool) -> None:
        self.last_llm_error = detail.splitlines()[0] if detail else "no detail"
        if merge:  # counted here, since a merge's outcome does not touch the proposal streaks
            self.llm_errors += 1

    def sandbox(self, results: Sequence[InstanceResult]) -> StopReason | None:
        """After an evaluation: sandbox failures in a row stop the run (a broken engine or image would spend the
        budget on them). Results served from the store say nothing about the sandbox."""
        ran = [r for r in results if r.ran]
        if not ran:
            return None
        failed = [r for r in ran if r.status == "sandbox_error"]
        if not failed:
            self.sandbox_errors = 0
            return None
        self.sandbox_errors += 1
        if self.sandbox_errors < Defaults.sandbox_error_streak_stop:
            return None
        said = failed[0].feedback.splitlines()[0][:300] if failed[0].feedback else "no detail"
        return StopReason("error", f"the sandbox failed {self.sandbox_errors} times in a row (the last: {said}); "
                          "check it with `evolver sandbox check`, then `evolver resume`")

    def stop(self) -> StopReason | None:
        if self.llm_errors >= Defaults.llm_error_streak_stop:
            return StopReason("llm_failure", f"the LLM failed {self.llm_errors} times in a row after retries (the "
                                             f"last time: {self.last_llm_error}); check the model and its server")
        if self.nothing_new >= Defaults.nothing_new_stop:
            return StopReason("nothing_new", f"nothing new: the last {self.nothing_new} proposals changed nothing or "
                              "repeated a candidate (the proposer has run out of ideas for this program)")
        return None
