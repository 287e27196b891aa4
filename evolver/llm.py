"""The one place evolver talks to a language model: a thin, thread-safe wrapper around litellm.

litellm is imported on the first call, never at import time: it takes seconds to import, and commands that
need no model (`evolver eval`, the LLM-free proposer) must not pay for it. Its price map is read from the copy
shipped with litellm (`LITELLM_LOCAL_MODEL_COST_MAP`), so a call never downloads anything but the reply.

Retries are ours, not litellm's or the OpenAI SDK's (both are told 0): one loop decides what is transient
(429, 5xx, timeouts, dropped connections) and what needs the user (bad key, unknown model, bad request, nothing
listening at the address), and every attempt is counted in the `LLMCallRecord` handed to `on_call`. An optional
`time_left` (a run's time budget) bounds every attempt's timeout and every wait, so a hanging server cannot hold
a run past its budget. API keys never enter a record, a cache file or an error message.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
# Failures worth another attempt: the same request may well succeed a moment later.
RETRYABLE_KINDS = frozenset({"unreachable", "timeout", "transient"})


class LLMError(EvolverError):
    """A model call failed in a way the caller cannot retry its way out of; the message says what to do.

    `kind` (one of config.LLM_ERROR_KINDS) says what failed, so callers decide without reading the message."""

    def __init__(self, message: str, kind: str = "rejected") -> None:
        super().__init__(message)
        self.kind = kind


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
    error_kind: str | None = None  # config.LLM_ERROR_KINDS, when the call failed
    attempt_errors: tuple[str, ...] = ()  # the error of every failed HTTP attempt, in order, retried ones included


@dataclass
class _Tally:
    """What one call's attempts have done so far (the loop's own state, not a record)."""

    attempts: int = 0  # HTTP requests sent
    timeout_s: float = 0.0  # the last attempt's timeout (the time budget may have cut it short)
    errors: list[str] = field(default_factory=list)
    last_kind: str | None = None


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
    thread, before `complete` returns or raises; it must be thread-safe if the LLM is shared. `time_left`, when
    given, returns the seconds left in the caller's time budget (None: no limit): no attempt's timeout and no
    wait (for a slot or before a retry) goes past it, and a call with no time left fails at once.
    """

    def __init__(self, config: LLMConfig, on_call: Callable[[LLMCallRecord], None] | None = None,
                 time_left: Callable[[], float | None] | None = None) -> None:
        self.config = config
        self.on_call = on_call
        self.time_left = time_left
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
            self._record(key, purpose, started_at, reply)
            return reply

        tally = _Tally()
        try:
            api_key = self._api_key()  # before the import: a missing key should not cost seconds to report
            if (left := self._left()) is not None and left <= 0:
                raise self._no_time(tally)  # at once, without the seconds of importing litellm
            litellm = _import_litellm()
            kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                                      "max_retries": 0, "num_retries": 0}
            if cfg.max_tokens is not None:
                kwargs["max_tokens"] = cfg.max_tokens
            if cfg.api_base:
                kwargs["api_base"] = cfg.api_base
            if api_key is not None:
                kwargs["api_key"] = api_key
            response = self._send(litellm, kwargs, api_key, tally)
        except LLMError as exc:
            self._record(key, purpose, started_at, None, exc, tally, time.monotonic() - t0)
            raise
        except BaseException:  # Ctrl-C mid-call: the requests already sent were sent, and are counted
            self._record(key, purpose, started_at, None, LLMError(f"{self._where()}: interrupted", "interrupted"),
                         tally, time.monotonic() - t0)
            raise
        reply = self._reply(litellm, response, tally.attempts, time.monotonic() - t0)
        self._cache_put(key, reply)
        self._record(key, purpose, started_at, reply, None, tally)
        return reply

    def _send(self, litellm: Any, kwargs: dict[str, Any], api_key: str | None, tally: _Tally) -> Any:
        """The HTTP attempts of one call: the response, or LLMError once retrying cannot or may not help."""
        cfg = self.config
        while True:
            timeout = tally.timeout_s = self._take_slot(tally)
            tally.attempts += 1
            try:
                try:
                    return litellm.completion(**kwargs, timeout=timeout)
                finally:
                    # The slot is held for the request only, never during backoff, so a throttled call does
                    # not keep others waiting.
                    self._slots.release()
            except Exception as exc:  # noqa: BLE001 - classified below; nothing escapes unrecorded
                detail = _redact(f"{type(exc).__name__}: {_message(exc)}", self._secrets(api_key))
                kind = tally.last_kind = _error_kind(litellm, exc)
                tally.errors.append(detail)
                if kind not in RETRYABLE_KINDS or tally.attempts > cfg.max_retries:
                    # from None: the cause may carry the request, headers included
                    raise LLMError(self._failure_message(litellm, exc, kind, detail, tally), kind) from None
                wait = self._delay(tally.attempts, _retry_after(exc))
                left = self._left()
                if left is not None and wait >= left:
                    raise LLMError(f"{self._where()}: gave up after {_tries(tally.attempts)}: the run's time "
                                   f"budget leaves {max(left, 0):.1f} s, less than the {wait:.1f} s wait before a "
                                   f"retry; last error: {detail}", kind) from None
                time.sleep(wait)

    def _take_slot(self, tally: _Tally) -> float:
        """Wait for a concurrency slot (no longer than the time left) and return the next attempt's timeout:
        the configured one, or the time left when that is shorter."""
        left = self._left()
        if left is None:
            self._slots.acquire()
            return self.config.timeout_s
        if left <= 0 or not self._slots.acquire(timeout=left):
            raise self._no_time(tally)
        left = self._left() or 0.0
        if left <= 0:
            self._slots.release()
            raise self._no_time(tally)
        # Whole seconds: litellm keeps one HTTP client per distinct timeout, so a fresh fraction per call would
        # build (and cache) a new client each time. Rounding up overshoots the budget by under a second.
        return min(self.config.timeout_s, float(math.ceil(left)))

    def _left(self) -> float | None:
        return None if self.time_left is None else self.time_left()

    def _no_time(self, tally: _Tally) -> LLMError:
        if not tally.attempts:
            return LLMError(f"{self._where()}: not called: the run's time budget is used up", "no_time")
        # The kind of the last attempt's failure: an endpoint that is down is down, whatever the clock says.
        return LLMError(f"{self._where()}: gave up after {_tries(tally.attempts)}: the run's time budget is used "
                        f"up; last error: {tally.errors[-1]}", tally.last_kind or "no_time")

    def _where(self) -> str:
        """The model and the address it was called at, for every failure message."""
        cfg = self.config
        return f"{cfg.model} at {cfg.api_base}" if cfg.api_base else f"{cfg.model} (its provider's endpoint)"

    def _failure_message(self, litellm: Any, exc: Exception, kind: str, detail: str, tally: _Tally) -> str:
        cfg = self.config
        gave_up = f"gave up after {_tries(tally.attempts)}; last error: {detail}"
        if kind == "unreachable":
            if cfg.api_base:
                return (f"{cfg.model}: nothing answered at {cfg.api_base} ({gave_up}); start the server there "
                        "or correct --api-base")
            return f"{self._where()}: the provider could not be reached ({gave_up}); check the network connection"
        if kind == "timeout":
            return (f"{self._where()}: no reply within {tally.timeout_s:g} s ({gave_up}); check that the server "
                    "answers, or raise --llm-timeout")
        if kind == "transient":
            return f"{self._where()}: {gave_up}"
        return self._fatal_message(litellm, exc, detail)

    # -- helpers -------------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        cfg = self.config
        if cfg.api_key_env:
            value = os.environ.get(cfg.api_key_env)
            if value:
                return value
            if cfg.api_base:
                return DUMMY_API_KEY
            raise LLMError(f"{cfg.api_key_env} is not set: export {cfg.api_key_env}=<key> for model {cfg.model!r}",
                           "no_key")
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
                    f"provider/name, e.g. openai/gpt-4o-mini, ollama/qwen2.5-coder)"
                    + (" and the --api-base URL" if cfg.api_base else ""))
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

    def _record(self, key: str, purpose: str, started_at: float, reply: LLMReply | None,
                error: LLMError | None = None, tally: _Tally | None = None, latency_s: float = 0.0) -> None:
        if self.on_call is None:
            return
        r, tally = reply, tally or _Tally()
        self.on_call(LLMCallRecord(
            request_hash=key, model=self.config.model, purpose=purpose, started_at=started_at,
            latency_s=r.latency_s if r else latency_s, attempts=r.attempts if r else tally.attempts,
            prompt_tokens=r.prompt_tokens if r else 0, completion_tokens=r.completion_tokens if r else 0,
            cost_usd=r.cost_usd if r else None, finish_reason=r.finish_reason if r else None,
            error=str(error) if error else None, cached=r.cached if r else False,
            error_kind=error.kind if error else None, attempt_errors=tuple(tally.errors)))

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


def _error_kind(litellm: Any, exc: Exception) -> str:
    """What kind of failure an attempt's exception is (config.LLM_ERROR_KINDS)."""
    # Checked first: litellm reports a refused connection as InternalServerError("Connection error."), which
    # would read as a flaky server rather than an address where nothing listens.
    if _unreachable(exc):
        return "unreachable"
    # Checked before the status: litellm.Timeout (408) and APIConnectionError (500) subclass openai's
    # connection errors, and ContextWindowExceededError is a BadRequestError (400) that no retry fixes.
    if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return "auth"
    if isinstance(exc, litellm.NotFoundError):
        return "not_found"
    if isinstance(exc, litellm.BadRequestError | litellm.UnprocessableEntityError):
        return "rejected"
    if isinstance(exc, litellm.Timeout):
        return "timeout"
    if isinstance(exc, litellm.RateLimitError | litellm.APIConnectionError | litellm.InternalServerError
                  | litellm.ServiceUnavailableError | litellm.BadGatewayError):
        return "transient"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):  # e.g. litellm.APIError(502, ...)
        return "transient"
    return "rejected"


def _unreachable(exc: BaseException) -> bool:
    """Whether the attempt never reached a server: connection refused, unknown host, no route (httpx's
    ConnectError somewhere in the chain of causes). A connect *timeout* is not counted: it may come from a
    timeout the time budget cut short."""
    import httpx  # a dependency of litellm, loaded with it

    seen: BaseException | None = exc
    for _ in range(10):  # chains are short; a cycle must not loop forever
        if seen is None:
            return False
        if isinstance(seen, httpx.ConnectError | ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tries(attempts: int) -> str:
    return f"{attempts} attempt" + ("s" if attempts != 1 else "")


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
