"""The reflective proposer: an LLM reads the parent, its side information and the lessons, states a diagnosis,
and replies with edits; failed edits go back to it with the precise error for repair turns.

Side information is candidate output: the prompt fences it with a per-prompt nonce, labels it untrusted, and
prefixes every line of it so nothing inside can pass for an edit block or an instruction (prompts.py).
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Mapping, Sequence

from ..config import BUILTIN_MODEL
from ..errors import UserInputError
from ..llm import LLM, LLMError
from ..patches import apply_reply, truncated
from .base import Proposal, ProposalContext, ProposerSettings
from .prompts import Prompts, load_prompts, mutation_prompt


def reply_section(reply: str, name: str) -> str:
    """A `## Name` section of an LLM's reply, on one line."""
    m = re.search(rf"^#+\s*{name}\s*$(.*?)(?=^#+\s*\w|^\S+\.\w+\s*$|<<<<<<<|\Z)", reply, re.M | re.S | re.I)
    return " ".join(m.group(1).split())[:1500] if m else ""


def _failure_kind(errors: Sequence) -> str:
    kinds = {getattr(e, "kind", "") for e in errors}
    if "syntax" in kinds:
        return "syntax"
    if "not_mutable" in kinds or "bad_path" in kinds:
        return "not_mutable"
    return "patch_failed"


class ReflectiveProposer:
    name = "reflective"

    def __init__(self, llm: LLM, repair_turns: int = 2, prompts: Prompts | None = None) -> None:
        self.llm, self.repair_turns = llm, repair_turns
        self.prompts = prompts or load_prompts()

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal:
        nonce = secrets.token_hex(4)
        messages = [{"role": "system", "content": self.prompts.render("mutation_system")},
                    {"role": "user", "content": mutation_prompt(self.prompts, ctx, nonce)}]
        files: Mapping[str, str] = ctx.parent_files
        diagnosis = change = ""
        for turn in range(self.repair_turns + 1):
            try:
                reply = self.llm.complete(messages, purpose="propose" if turn == 0 else "repair")
            except LLMError as exc:
                return Proposal(failure="llm_error", detail=str(exc), diagnosis=diagnosis, change=change)
            text = reply.text or ""
            diagnosis = reply_section(text, "Diagnosis") or diagnosis
            change = reply_section(text, "Change") or change
            if reply.truncated or truncated(text):
                # Never apply a cut-off reply: its last edit may be half of what was meant.
                return Proposal(failure="truncated", diagnosis=diagnosis, change=change,
                                detail=f"the reply was cut off (finish_reason={reply.finish_reason})")
            result = apply_reply(text, dict(files), ctx.task.is_mutable)
            if result.ok:
                return Proposal(changes=result.changes, diagnosis=diagnosis, change=change)
            if result.noop and not result.errors:
                return Proposal(failure="noop", diagnosis=diagnosis, change=change,
                                detail="the edits leave every file as it was")
            feedback = result.feedback()
            if turn == self.repair_turns:
                return Proposal(failure=_failure_kind(result.errors), detail=feedback, diagnosis=diagnosis,
                                change=change)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": self.prompts.render("repair", errors=feedback)}]
        raise AssertionError("unreachable")


def make_reflective(settings: ProposerSettings) -> ReflectiveProposer:
    """Registry factory (`evolver.proposers`: reflective)."""
    if settings.llm is None or settings.model == BUILTIN_MODEL:
        raise UserInputError("proposer reflective: expected an LLM (--model with a litellm model string), found "
                             "--model builtin; use --proposer builtin for the LLM-free proposer")
    return ReflectiveProposer(settings.llm, settings.repair_turns, settings.prompts)
