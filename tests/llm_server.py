"""A real OpenAI-compatible HTTP server for the LLM tests: scripted replies, recorded requests.

The tests drive litellm's real code path (HTTP client, response parsing, exception mapping) against this
server instead of mocking litellm, so a litellm upgrade that changes any of that shows up here.

Script entries, consumed one per request in order:
- a string: 200 with a chat.completion whose message is that text, finish_reason "stop", usage tokens;
- a dict: {"status": 429, "retry_after": 0} (Retry-After header when given), {"status": 500}, {"status": 401},
  {"text": "...", "finish_reason": "length"}, {"delay_s": 2.0, "text": "..."} (sleeps before answering).
When the script runs out the server answers 500 with "script exhausted", so a test that makes more calls than
it scripted fails loudly instead of hanging.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

ScriptEntry = str | dict[str, Any]

_ERROR_MESSAGES = {
    400: "bad request", 401: "Incorrect API key provided", 404: "The model does not exist",
    429: "Rate limit reached", 500: "internal error", 502: "bad gateway", 503: "service unavailable",
}
_ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}


@dataclass
class ScriptedLLMServer:
    """Serves `script` on 127.0.0.1 (a free port, or `bind_port`); `requests` holds every request body received,
    parsed."""

    script: list[ScriptEntry] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    max_in_flight: int = 0  # most requests being answered at once, to check a client's concurrency bound
    bind_port: int = 0  # a given port: a server started where a run's stored api_base pointed at nothing

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> ScriptedLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real OpenAI API; httpx reuses connections

            def do_POST(self) -> None:
                with server._lock:
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    server._handle(self)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.bind_port), Handler)
        self._httpd.daemon_threads = True  # a slow scripted reply must not block shutdown
        # A short poll interval: shutdown() waits up to one interval, paid at the end of every test.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="scripted-llm",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def api_base(self) -> str:
        """What to pass as api_base: litellm's openai/* provider appends /chat/completions."""
        return f"http://127.0.0.1:{self.port}/v1"

    def add(self, *entries: ScriptEntry) -> None:
        with self._lock:
            self.script.extend(entries)

    def prompts(self) -> list[str]:
        """The concatenated message contents of every request, for asserting what a prompt contained."""
        return ["\n".join(str(m.get("content", "")) for m in r.get("messages", [])) for r in self.requests]

    # -- serving -------------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        path = h.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send(h, 404, {"error": {"message": f"no route {h.path}", "type": "invalid_request_error"}})
            return
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in h.headers.items()})
            self.paths.append(path)
            entry: ScriptEntry | None = self.script.pop(0) if self.script else None
        if entry is None:
            self._send(h, 500, {"error": {"message": "script exhausted", "type": "server_error"}})
            return
        if isinstance(entry, str):
            entry = {"text": entry}
        if entry.get("delay_s"):
            time.sleep(float(entry["delay_s"]))
        status = int(entry.get("status", 200))
        if status != 200:
            extra = {}
            if "retry_after" in entry:
                extra["Retry-After"] = str(entry["retry_after"])
            message = entry.get("message", _ERROR_MESSAGES.get(status, "error"))
            err = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "code": None}
            self._send(h, status, {"error": err}, extra)
            return
        self._send(h, 200, self._completion(body, entry))

    @staticmethod
    def _completion(body: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        text = str(entry.get("text", ""))
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        # Deterministic token counts the tests can assert on: ~4 characters a token, at least 1.
        prompt_tokens = int(entry.get("prompt_tokens", max(1, prompt_chars // 4)))
        completion_tokens = int(entry.get("completion_tokens", max(1, len(text) // 4)))
        return {
            "id": f"chatcmpl-test-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": entry.get("finish_reason", "stop"),
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
              extra_headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (extra_headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and hung up: what the timeout tests provoke


@pytest.fixture
def scripted_llm() -> Iterator[ScriptedLLMServer]:
    """A started server with an empty script; tests call `.add(...)` then point api_base at `.api_base`."""
    with ScriptedLLMServer() as server:
        yield server
