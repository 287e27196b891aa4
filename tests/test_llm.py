"""evolver.llm through litellm's real code path, against a scripted local OpenAI-compatible server.

The model is "openai/test-model" with api_base = the server: litellm routes openai/* to any OpenAI-compatible
base URL, so its HTTP client, response parsing and exception mapping all run for real.
"""

# pytest fixtures imported from llm_server are, by design, redefined as the tests' arguments:
# ruff: noqa: F811

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from llm_server import ScriptedLLMServer, scripted_llm  # noqa: F401 - scripted_llm is a fixture

from evolver.errors import EvolverError
from evolver.llm import LLM, LLMCallRecord, LLMConfig, LLMError, request_hash, resolve_credentials

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "system", "content": "You improve programs."},
            {"role": "user", "content": "Make dispatch.priority faster."}]
FAKE_KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key must never reach the test server, and results must not depend on it.
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "EVOLVER_TEST_KEY"):
        monkeypatch.delenv(var, raising=False)


def make_llm(server: ScriptedLLMServer, **overrides) -> tuple[LLM, list[LLMCallRecord]]:
    records: list[LLMCallRecord] = []
    settings = {"model": "openai/test-model", "api_base": server.api_base, "timeout_s": 5.0, "max_retries": 2,
                "backoff_base_s": 0.01, "backoff_cap_s": 0.05} | overrides
    return LLM(LLMConfig(**settings), on_call=records.append), records


def test_normal_reply_counts_tokens_and_sends_the_prompt(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add("def priority(op):\n    return op.duration\n")
    llm, records = make_llm(scripted_llm, temperature=0.2, max_tokens=256)
    reply = llm.complete(MESSAGES, purpose="propose")
    assert reply.text == "def priority(op):\n    return op.duration\n"
    assert reply.finish_reason == "stop" and not reply.truncated
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert reply.attempts == 1 and not reply.cached and reply.model == "openai/test-model"
    body = scripted_llm.requests[0]
    assert body["model"] == "test-model"  # litellm strips the provider prefix
    assert body["messages"] == MESSAGES and body["temperature"] == 0.2 and body["max_tokens"] == 256
    assert "dispatch.priority" in scripted_llm.prompts()[0]
    [rec] = records
    assert rec.purpose == "propose" and rec.error is None and rec.attempts == 1
    assert rec.prompt_tokens == reply.prompt_tokens and rec.completion_tokens == reply.completion_tokens
    assert rec.request_hash == request_hash("openai/test-model", MESSAGES, 0.2, 256, scripted_llm.api_base)


def test_plain_chat_completions_path_is_served(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add("ok")
    llm, _ = make_llm(scripted_llm, api_base=f"http://127.0.0.1:{scripted_llm.port}")
    assert llm.complete(MESSAGES).text == "ok"
    assert scripted_llm.paths == ["/chat/completions"]


def test_rate_limit_is_retried(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"status": 429, "retry_after": 0}, "second time lucky")
    llm, records = make_llm(scripted_llm)
    reply = llm.complete(MESSAGES, purpose="repair")
    assert reply.text == "second time lucky" and reply.attempts == 2
    assert len(scripted_llm.requests) == 2  # both HTTP requests reached the server
    [rec] = records  # one record per call, counting both attempts
    assert rec.attempts == 2 and rec.error is None and rec.purpose == "repair"


def test_retry_after_header_is_honoured(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"status": 429, "retry_after": 0.6}, "done")
    llm, _ = make_llm(scripted_llm, backoff_base_s=0.001)
    reply = llm.complete(MESSAGES)
    assert reply.attempts == 2 and reply.latency_s >= 0.6  # the backoff alone would wait about 1 ms


def test_server_errors_exhaust_retries(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"status": 500}, {"status": 503}, {"status": 502}, "never reached")
    llm, records = make_llm(scripted_llm, max_retries=2)
    with pytest.raises(LLMError, match="gave up after 3 attempts; last error: BadGatewayError") as info:
        llm.complete(MESSAGES)
    assert isinstance(info.value, EvolverError)
    assert len(scripted_llm.requests) == 3
    [rec] = records
    assert rec.attempts == 3 and rec.error == str(info.value) and rec.cost_usd is None


def test_unreachable_server_is_retried_then_fails() -> None:
    with ScriptedLLMServer() as gone:
        api_base = gone.api_base  # a port that was just free; nothing listens once the server stops
    records: list[LLMCallRecord] = []
    llm = LLM(LLMConfig("openai/test-model", api_base=api_base, max_retries=1, backoff_base_s=0.01),
              on_call=records.append)
    # litellm maps a refused connection to InternalServerError("Connection error."), not APIConnectionError.
    with pytest.raises(LLMError, match=r"gave up after 2 attempts; last error: .*Connection error"):
        llm.complete(MESSAGES)
    assert records[0].attempts == 2


def test_bad_key_fails_at_once_naming_the_variable(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"status": 401}, "never reached")
    llm, records = make_llm(scripted_llm)
    with pytest.raises(LLMError, match=r"rejected the API key.*set OPENAI_API_KEY"):
        llm.complete(MESSAGES)
    assert len(scripted_llm.requests) == 1 and records[0].attempts == 1


def test_bad_key_names_the_configured_variable(scripted_llm: ScriptedLLMServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLVER_TEST_KEY", FAKE_KEY)
    scripted_llm.add({"status": 401})
    llm, _ = make_llm(scripted_llm, api_key_env="EVOLVER_TEST_KEY")
    with pytest.raises(LLMError, match="set EVOLVER_TEST_KEY to a valid key"):
        llm.complete(MESSAGES)


def test_unknown_model_and_bad_request_are_not_retried(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"status": 404}, {"status": 400, "message": "temperature out of range"})
    llm, records = make_llm(scripted_llm)
    with pytest.raises(LLMError, match="openai/test-model: model not found"):
        llm.complete(MESSAGES)
    with pytest.raises(LLMError, match=r"request rejected.*temperature out of range"):
        llm.complete(MESSAGES)
    assert len(scripted_llm.requests) == 2 and [r.attempts for r in records] == [1, 1]


def test_truncated_reply_is_flagged(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"text": "def priority(op):\n    return (", "finish_reason": "length"})
    llm, records = make_llm(scripted_llm)
    reply = llm.complete(MESSAGES)
    assert reply.truncated and reply.finish_reason == "length"
    assert records[0].finish_reason == "length"


def test_timeout_is_retried(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"delay_s": 2.0, "text": "too late"}, "in time")
    llm, records = make_llm(scripted_llm, timeout_s=0.4)
    reply = llm.complete(MESSAGES)
    assert reply.text == "in time" and reply.attempts == 2
    assert 0.4 <= reply.latency_s < 2.0
    assert records[0].attempts == 2 and records[0].error is None


def test_cache_answers_identical_requests(scripted_llm: ScriptedLLMServer, tmp_path: Path) -> None:
    scripted_llm.add("first", "for another temperature")
    llm, records = make_llm(scripted_llm, cache_dir=tmp_path / "cache")
    first = llm.complete(MESSAGES)
    again = llm.complete([dict(m) for m in MESSAGES])  # equal, not the same object
    assert again.text == "first" and again.cached and again.attempts == 0 and again.cost_usd == 0.0
    assert again.prompt_tokens == first.prompt_tokens
    assert len(scripted_llm.requests) == 1
    assert [r.cached for r in records] == [False, True]
    # A fresh LLM on the same directory (a resumed run) is served from disk too.
    other, _ = make_llm(scripted_llm, cache_dir=tmp_path / "cache")
    assert other.complete(MESSAGES).cached
    hotter, _ = make_llm(scripted_llm, cache_dir=tmp_path / "cache", temperature=1.0)
    assert hotter.complete(MESSAGES).text == "for another temperature"
    assert len(scripted_llm.requests) == 2
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2 and all(json.loads(f.read_text())["text"] for f in files)
    for f in files:  # a damaged file is a miss, not a crash
        f.write_text('{"text": "half')
    scripted_llm.add("fresh")
    assert llm.complete(MESSAGES).text == "fresh"


def test_cost_is_none_for_an_unpriced_model_and_known_for_a_priced_one(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add({"text": "x" * 40, "prompt_tokens": 1000, "completion_tokens": 10},
                     {"text": "y" * 40, "prompt_tokens": 1000, "completion_tokens": 10})
    unknown, _ = make_llm(scripted_llm)
    reply = unknown.complete(MESSAGES)
    assert reply.cost_usd is None and (reply.prompt_tokens, reply.completion_tokens) == (1000, 10)
    priced, records = make_llm(scripted_llm, model="openai/gpt-4o-mini")  # in litellm's bundled price map
    reply = priced.complete(MESSAGES)
    assert reply.cost_usd is not None and reply.cost_usd > 0 and records[0].cost_usd == reply.cost_usd


def test_concurrency_bounds_calls_in_flight(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add(*[{"delay_s": 0.3, "text": f"r{i}"} for i in range(6)])
    llm, records = make_llm(scripted_llm, concurrency=2)
    replies: list[str] = []
    threads = [threading.Thread(target=lambda: replies.append(llm.complete(MESSAGES).text)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(replies) == [f"r{i}" for i in range(6)] and len(records) == 6
    assert scripted_llm.max_in_flight == 2


def test_local_server_gets_a_dummy_key(scripted_llm: ScriptedLLMServer) -> None:
    scripted_llm.add("ok")
    llm, _ = make_llm(scripted_llm)
    llm.complete(MESSAGES)
    assert scripted_llm.headers[0]["authorization"] == "Bearer sk-no-key-needed"


@pytest.mark.parametrize("how", ["provider variable", "api_key_env"])
def test_api_key_never_reaches_records_or_errors(scripted_llm: ScriptedLLMServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "api_key_env":
        monkeypatch.setenv("EVOLVER_TEST_KEY", FAKE_KEY)
        extra = {"api_key_env": "EVOLVER_TEST_KEY"}
    else:
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        extra = {}
    scripted_llm.add("ok", {"status": 401, "message": f"Incorrect API key provided: {FAKE_KEY}"},
                     {"status": 500, "message": f"upstream refused {FAKE_KEY}"})
    llm, records = make_llm(scripted_llm, cache_dir=tmp_path / "cache", max_retries=0, **extra)
    llm.complete(MESSAGES)
    errors = []
    for prompt in ("second", "third"):
        with pytest.raises(LLMError) as info:
            llm.complete([{"role": "user", "content": prompt}])
        errors.append(str(info.value))
    assert scripted_llm.headers[0]["authorization"] == f"Bearer {FAKE_KEY}"  # the key was used...
    assert len(records) == 3 and records[1].error and records[2].error
    everything = repr(records) + repr(errors) + repr(llm.config)
    everything += "".join(f.read_text() for f in (tmp_path / "cache").rglob("*.json"))
    assert FAKE_KEY not in everything  # ...and is nowhere in what evolver keeps or shows


def test_missing_configured_key_fails_before_any_request() -> None:
    records: list[LLMCallRecord] = []
    llm = LLM(LLMConfig("openai/gpt-4o-mini", api_key_env="EVOLVER_TEST_KEY"), on_call=records.append)
    with pytest.raises(LLMError, match="EVOLVER_TEST_KEY is not set"):
        llm.complete(MESSAGES)
    [rec] = records  # recorded like any failed call, with no attempt made
    assert rec.attempts == 0 and rec.error is not None and "EVOLVER_TEST_KEY" in rec.error


def test_importing_evolver_llm_does_not_import_litellm() -> None:
    out = subprocess.run([sys.executable, "-c", "import evolver.llm, sys; print('litellm' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(EvolverError, match="concurrency: expected 1 or more, found 0"):
        LLMConfig("openai/gpt-4o-mini", concurrency=0)


def test_resolve_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_credentials("openai/anything", "http://localhost:8000/v1") is None
    assert resolve_credentials("ollama/qwen2.5-coder", None) is None
    msg = resolve_credentials("openai/gpt-4o-mini", None)
    assert msg is not None and "OPENAI_API_KEY" in msg and "--api-base" in msg and "--model builtin" in msg
    assert "\n" not in msg
    assert "ANTHROPIC_API_KEY" in (resolve_credentials("anthropic/claude-sonnet-4-5", None) or "")
    assert "ANTHROPIC_API_KEY" in (resolve_credentials("claude-sonnet-4-5", None) or "")
    assert "GEMINI_API_KEY" in (resolve_credentials("gemini/gemini-2.5-flash", None) or "")
    assert "--api-base" in (resolve_credentials("hosted_vllm/qwen", None) or "")
    assert "names no provider" in (resolve_credentials("mystery-model", None) or "")
    assert "EVOLVER_TEST_KEY is not set" in (resolve_credentials("openai/x", None, "EVOLVER_TEST_KEY") or "")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("GOOGLE_API_KEY", FAKE_KEY)
    monkeypatch.setenv("EVOLVER_TEST_KEY", FAKE_KEY)
    assert resolve_credentials("openai/gpt-4o-mini", None) is None
    assert resolve_credentials("gpt-4o-mini", None) is None
    assert resolve_credentials("gemini/gemini-2.5-flash", None) is None  # litellm also reads GOOGLE_API_KEY
    assert resolve_credentials("openai/x", None, "EVOLVER_TEST_KEY") is None
