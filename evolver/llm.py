"""The one place evolver talks to a language model: a thin, thread-safe wrapper around litellm.

litellm is imported on the first call, never at import time: it takes seconds to import, and commands that
need no model (`evolver eval`, the LLM-free proposer) must not pay for it. Its price map is read from the copy
shipped with litellm (`LITELLM_LOCAL_MODEL_COST_MAP`), so a call never downloads anything but the reply.

Retries are ours, not litellm's or the OpenAI SDK's (both are told 0): one loop decides what is transient
(429, 5xx, timeouts, dropped connections) and what needs the user (bad key, unknown model, bad request), and
every attempt is counted in the `LLMCallRecord` handed to `on_call`. API keys never enter a record, a cache
file or an error message.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolver.config import Defaults
from evolver.credentials import PROVIDER_KEYS, provider_of, resolve_credentials
from evolver.errors import EvolverError, UserInputError

__all__ = ["LLM", "LLMCallRecord", "LLMConfig", "LLMError", "LLMReply", "provider_of", "request_hash",
           "resolve_credentials"]

# Sent when api_base points at a local server and no key is configured: the OpenAI SDK refuses to send a
# request without one, and local servers (Ollama, vLLM, llama.cpp) ignore it.
DUMMY_API_KEY = "sk-no-key-needed"
RETRY_AFTER_CAP_S = 120.0  # a server asking for longer is treated as down: waiting longer helps nobody

class LLMError(EvolverError):
    """A model call failed in a way the caller cannot retry its way out of; the message says what to do."""


@dataclass(frozen=True)
class LLMConfig:
    model: str  # a litellm model string: "openai/gpt-4o-mini", "anthropic/claude-...", "ollama/qwen2.5-coder"
    api_base: str | None = None  # a local or self-hosted OpenAI-compatible server; no key check then
    api_key_env: str | None = None  # env var holding the key; None: litellm's own lookup per provider
    temperature: float = Defaults.temperature
    max_tokens: int | None = Defaults.max_tokens  # None: the provider's default
    timeout_s: float = Defaults.llm_timeout_s  # per attempt
    max_retries: int = Defaults.llm_max_retries  # transient failures retried this many times (max_retries + 1 attempts)
    backoff_base_s: float = Defaults.llm_backoff_base_s
    backoff_cap_s: float = Defaults.llm_backoff_cap_s
    concurrency: int = Defaults.llm_concurrency  # calls in flight at once across all threads sharing one LLM
    cache_dir: str | Path | None = None  # opt-in: identical requests answered from JSON files

    def __post_init__(self) -> None:
        checks = [("model", bool(self.model.strip()), "a litellm model string such as openai/gpt-4o-mini"),
                  ("timeout_s", self.timeout_s > 0, "a positive number"),
                  ("max_retries", self.max_retries >= 0, "0 or more"),
                  ("backoff_base_s", self.backoff_base_s >= 0, "0 or more"),
                  ("concurrency", self.concurrency >= 1, "1 or more"),
                  ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "1 or more")]
        for name, ok, expected in checks:
            if not ok:
                raise UserInputError(f"LLM setting {name}: expected {expected}, found {getattr(self, name)!r}")


@dataclass(frozen=True)
class LLMReply:
    text: str
    finish_reason: str | None
    truncated: bool  # the reply hit max_tokens: a patch in it is probably cut off
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: the model is not in litellm's price map (local models, new releases)
    latency_s: float  # wall clock of the whole call, retries and backoff included
    attempts: int  # HTTP requests made; 0 for a cache hit
    cached: bool
    model: str


@dataclass(frozen=True)
class LLMCallRecord:
    """What a store keeps about one call (success or failure). Holds no key, no header, no prompt text."""

    request_hash: str
    model: str
    purpose: str
    started_at: float  # unix time
    latency_s: float
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    finish_reason: str | None
    error: str | None
    cached: bool = False


def request_hash(model: str, messages: list[dict[str, Any]], temperature: float, max_tokens: int | None,
                 api_base: str | None) -> str:
    """sha256 of the canonical request: the cache key and the id a record carries."""
    canonical = json.dumps({"model": model, "messages": messages, "temperature": temperature,
                            "max_tokens": max_tokens, "api_base": api_base},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _import_litellm() -> Any:
    # Set before the first import: litellm otherwise fetches its price map from GitHub at import time
    # (seconds of retries offline). setdefault keeps a user's explicit choice.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # litellm prints "Give Feedback / Get Help" banners to stdout on every exception, which would corrupt
    # `--json` output; our LLMError messages carry what the user needs.
    litellm.suppress_debug_info = True
    return litellm


class LLM:
    """Calls one configured model. Share one instance across threads: `concurrency` bounds calls in flight.

    `on_call` gets an LLMCallRecord for every call (cache hits and failures included), from the calling
    thread, before `complete` returns or raises; it must be thread-safe if the LLM is shared.
    """

    def __init__(self, config: LLMConfig, on_call: Callable[[LLMCallRecord], None] | None = None) -> None:
        self.config = config
        self.on_call = on_call
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._cache = Path(config.cache_dir) if config.cache_dir is not None else None

    def complete(self, messages: list[dict[str, Any]], purpose: str = "propose") -> LLMReply:
        cfg = self.config
        key = request_hash(cfg.model, messages, cfg.temperature, cfg.max_tokens, cfg.api_base)
        started_at, t0 = time.time(), time.monotonic()
        hit = self._cache_get(key)
        if hit is not None:
            # A hit spends nothing (cost 0, 0 attempts); its tokens are those of the stored reply.
            reply = LLMReply(text=hit["text"], finish_reason=hit["finish_reason"],
                             truncated=hit["finish_reason"] == "length", prompt_tokens=hit["prompt_tokens"],
                             completion_tokens=hit["completion_tokens"], cost_usd=0.0,
                             latency_s=time.monotonic() - t0, attempts=0, cached=True, model=cfg.model)
            self._record(key, purpose, started_at, reply, None)
            return reply

        try:
            api_key = self._api_key()  # before the import: a missing key should not cost seconds to report
        except LLMError as exc:
            self._record(key, purpose, started_at, None, str(exc), 0, time.monotonic() - t0)
            raise
        litellm = _import_litellm()
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                                  "timeout": cfg.timeout_s, "max_retries": 0, "num_retries": 0}
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        if cfg.api_base:
            kwargs["api_base"] = cfg.api_base
        if api_key is not None:
            kwargs["api_key"] = api_key

        attempts = 0
        while True:
            attempts += 1
            try:
                # The slot is held for the request only, never during backoff, so a throttled call does
                # not keep others waiting.
                with self._slots:
                    response = litellm.completion(**kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - classified below; nothing escapes unrecorded
                detail = _redact(f"{type(exc).__name__}: {_message(exc)}", self._secrets(api_key))
                retry = _retryable(litellm, exc)
                if not retry or attempts > cfg.max_retries:
                    tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
                    error = (f"{cfg.model}: gave up after {tries}; last error: {detail}" if retry
                             else self._fatal_message(litellm, exc, detail))
                    self._record(key, purpose, started_at, None, error, attempts, time.monotonic() - t0)
                    raise LLMError(error) from None  # the cause may carry the request, headers included
                time.sleep(self._delay(attempts, _retry_after(exc)))

        reply = self._reply(litellm, response, attempts, time.monotonic() - t0)
        self._cache_put(key, reply)
        self._record(key, purpose, started_at, reply, None)
        return reply

    # -- helpers -------------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        cfg = self.config
        if cfg.api_key_env:
            value = os.environ.get(cfg.api_key_env)
            if value:
                return value
            if cfg.api_base:
                return DUMMY_API_KEY
            raise LLMError(f"{cfg.api_key_env} is not set: export {cfg.api_key_env}=<key> for model {cfg.model!r}")
        if cfg.api_base and not any(os.environ.get(e) for e in self._key_envs()):
            return DUMMY_API_KEY
        return None  # litellm finds the provider's key itself

    def _secrets(self, api_key: str | None) -> list[str]:
        # With api_key None litellm read the key itself, so every variable it may have read is a suspect.
        names = {*self._key_envs(), *(e for envs in PROVIDER_KEYS.values() for e in envs)}
        return [v for v in (api_key, *(os.environ.get(n) for n in names)) if v and v != DUMMY_API_KEY]

    def _key_envs(self) -> tuple[str, ...]:
        if self.config.api_key_env:
            return (self.config.api_key_env,)
        return PROVIDER_KEYS.get(provider_of(self.config.model) or "", ())

    def _fatal_message(self, litellm: Any, exc: Exception, detail: str) -> str:
        cfg = self.config
        where = f" at {cfg.api_base}" if cfg.api_base else ""
        if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError):
            envs = self._key_envs()
            var = envs[0] if envs else "the provider's API key variable"
            return (f"{cfg.model}: the server{where} rejected the API key ({detail}); set {var} to a valid key"
                    + ("" if cfg.api_key_env else " or name the variable with api_key_env"))
        if isinstance(exc, litellm.NotFoundError):
            return (f"{cfg.model}: model not found{where} ({detail}); check the model string (litellm form "
                    f"provider/name, e.g. openai/gpt-4o-mini, ollama/qwen2.5-coder)")
        if isinstance(exc, litellm.ContextWindowExceededError):
            return f"{cfg.model}: the prompt does not fit the model's context window ({detail})"
        return f"{cfg.model}: request rejected{where} ({detail})"

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.config
        # Exponential with jitter in [0.5, 1] of the step, so threads throttled together spread out.
        backoff = min(cfg.backoff_cap_s, cfg.backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            return max(backoff, min(retry_after, RETRY_AFTER_CAP_S))
        return backoff

    def _reply(self, litellm: Any, response: Any, attempts: int, latency_s: float) -> LLMReply:
        choice = response.choices[0]
        text = choice.message.content or ""  # None for a refusal or a tool-call-only reply
        finish = choice.finish_reason
        usage = getattr(response, "usage", None)
        try:
            cost: float | None = float(litellm.completion_cost(completion_response=response))
        except Exception:  # noqa: BLE001 - litellm raises assorted errors for models it has no price for
            cost = None
        return LLMReply(text=text, finish_reason=finish, truncated=finish == "length",
                        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0), cost_usd=cost,
                        latency_s=latency_s, attempts=attempts, cached=False, model=self.config.model)

    def _record(self, key: str, purpose: str, started_at: float, reply: LLMReply | None, error: str | None,
                attempts: int = 0, latency_s: float = 0.0) -> None:
        if self.on_call is None:
            return
        r = reply
        self.on_call(LLMCallRecord(
            request_hash=key, model=self.config.model, purpose=purpose, started_at=started_at,
            latency_s=r.latency_s if r else latency_s, attempts=r.attempts if r else attempts,
            prompt_tokens=r.prompt_tokens if r else 0, completion_tokens=r.completion_tokens if r else 0,
            cost_usd=r.cost_usd if r else None, finish_reason=r.finish_reason if r else None, error=error,
            cached=r.cached if r else False))

    # -- response cache ------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        return None if self._cache is None else self._cache / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ok = (isinstance(data["text"], str) and isinstance(data["finish_reason"], str | None)
                  and isinstance(data["prompt_tokens"], int) and isinstance(data["completion_tokens"], int))
            if ok:
                return data
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None  # unreadable or foreign: a miss, overwritten by the next reply

    def _cache_put(self, key: str, reply: LLMReply) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        data = {"text": reply.text, "finish_reason": reply.finish_reason, "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens, "cost_usd": reply.cost_usd, "model": reply.model,
                "created_at": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent reader (another thread or run) never sees half a file.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


def _retryable(litellm: Any, exc: Exception) -> bool:
    # Checked before the status: litellm.Timeout (408) and APIConnectionError (500) subclass openai's
    # connection errors, and ContextWindowExceededError is a BadRequestError (400) that no retry fixes.
    if isinstance(exc, litellm.BadRequestError | litellm.AuthenticationError | litellm.PermissionDeniedError
                  | litellm.NotFoundError | litellm.UnprocessableEntityError):
        return False
    if isinstance(exc, litellm.RateLimitError | litellm.Timeout | litellm.APIConnectionError
                  | litellm.InternalServerError | litellm.ServiceUnavailableError | litellm.BadGatewayError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)  # e.g. litellm.APIError(502, ...)


def _retry_after(exc: Exception) -> float | None:
    """Seconds a 429/503 asked us to wait. litellm leaves `exc.headers` empty for vendor errors; the server's
    headers are on `exc.response.headers` (also `exc.litellm_response_headers`)."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:  # OpenAI sends this finer-grained variant too
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:  # the HTTP-date form
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, AttributeError):
        return None


def _message(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc)
    for prefix in (f"litellm.{type(exc).__name__}: ", f"{type(exc).__name__}: "):  # litellm repeats the class
        text = text.removeprefix(prefix)
    return " ".join(text.split())[:500]  # one line; provider errors can carry whole HTML pages


def _redact(text: str, secrets: list[str]) -> str:
    # Providers sometimes echo the key in errors; never let it into a record or a message. Short values are
    # skipped: replacing "1" everywhere would mangle the message and protects nothing.
    for secret in secrets:
        if len(secret) >= 8:
            text = text.replace(secret, "***")
    return text
