"""LLM faults over real HTTP: a hanging endpoint, one that is down, retries and timeouts.

The LLM is the scripted OpenAI-compatible server (tests/llm_server.py) that litellm talks to through its normal
code path.
"""

# ruff: noqa: F811 - pytest fixtures are imported from the shared server module by name
from __future__ import annotations

import socket
import time

import pytest
from llm_server import ScriptedLLMServer, scripted_llm  # noqa: F401

from evolver.llm import LLM, LLMCallRecord, LLMConfig, LLMError

MODEL = "openai/test-model"
MESSAGES = [{"role": "user", "content": "Make f right."}]


def free_port() -> int:
    """A port nobody listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llm_for(server_base: str, **overrides) -> tuple[LLM, list[LLMCallRecord]]:
    records: list[LLMCallRecord] = []
    time_left = overrides.pop("time_left", None)
    settings = {"model": MODEL, "api_base": server_base, "timeout_s": 5.0, "max_retries": 2,
                "backoff_base_s": 0.01, "backoff_cap_s": 0.05} | overrides
    return LLM(LLMConfig(**settings), on_call=records.append, time_left=time_left), records


def warm_up(server: ScriptedLLMServer) -> None:
    """One call first, so litellm's import (seconds) is not inside a test's time budget."""
    server.add("warm-up")
    llm_for(server.api_base)[0].complete(MESSAGES)


def deadline_in(seconds: float):
    end = time.monotonic() + seconds
    return lambda: end - time.monotonic()


# -- the LLM alone ------------------------------------------------------------------------------------------
def test_no_time_left_fails_at_once_without_a_request(scripted_llm) -> None:
    scripted_llm.add("never asked for")
    llm, records = llm_for(scripted_llm.api_base, time_left=lambda: 0.0)
    with pytest.raises(LLMError, match="not called: the run's time budget is used up") as info:
        llm.complete(MESSAGES)
    assert info.value.kind == "no_time" and not scripted_llm.requests
    [rec] = records
    assert (rec.attempts, rec.error_kind, rec.error) == (0, "no_time", str(info.value))


def test_the_time_left_cuts_an_attempt_short_and_no_retry_follows(scripted_llm) -> None:
    warm_up(scripted_llm)
    scripted_llm.add({"delay_s": 30, "text": "too late"}, "never asked for")
    llm, records = llm_for(scripted_llm.api_base, timeout_s=60.0, time_left=deadline_in(1.5))
    t0 = time.monotonic()
    with pytest.raises(LLMError, match=f"{MODEL} at {scripted_llm.api_base}: gave up after 1 attempt") as info:
        llm.complete(MESSAGES)
    took = time.monotonic() - t0
    assert took < 6, took  # the attempt's timeout was the 1.5 s left (rounded up to 2), not 60 s
    assert info.value.kind == "timeout" and len(scripted_llm.requests) == 2
    assert records[0].attempts == 1 and records[0].attempt_errors[0].startswith("Timeout")


def test_no_backoff_is_slept_past_the_time_left(scripted_llm) -> None:
    warm_up(scripted_llm)
    scripted_llm.add({"status": 500}, "never asked for")
    llm, records = llm_for(scripted_llm.api_base, backoff_base_s=5.0, backoff_cap_s=5.0, time_left=deadline_in(2.0))
    t0 = time.monotonic()
    with pytest.raises(LLMError, match=r"time budget leaves .* less than the .* wait before a retry") as info:
        llm.complete(MESSAGES)
    assert time.monotonic() - t0 < 1.5 and info.value.kind == "transient"
    assert len(scripted_llm.requests) == 2 and records[0].attempts == 1


def test_every_failed_attempt_is_kept_with_the_call(scripted_llm) -> None:
    scripted_llm.add({"status": 500}, {"status": 429, "retry_after": 0}, "third time")
    llm, records = llm_for(scripted_llm.api_base)
    assert llm.complete(MESSAGES).text == "third time"
    [rec] = records
    assert rec.attempts == 3 == len(scripted_llm.requests) and rec.error is None and rec.error_kind is None
    assert [e.split(":")[0] for e in rec.attempt_errors] == ["InternalServerError", "RateLimitError"]


def test_nothing_listening_is_unreachable_and_names_the_address() -> None:
    api_base = f"http://127.0.0.1:{free_port()}/v1"
    llm, records = llm_for(api_base, max_retries=1)
    with pytest.raises(LLMError) as info:
        llm.complete(MESSAGES)
    message = str(info.value)
    assert info.value.kind == "unreachable" and MODEL in message and api_base in message and "--api-base" in message
    assert records[0].attempts == 2 == len(records[0].attempt_errors) and records[0].error_kind == "unreachable"
