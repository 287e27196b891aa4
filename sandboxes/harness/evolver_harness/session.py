"""The interactive session channel between the trusted harness and the untrusted child.

An evaluator that defines `serve(instance, inputs)` gets a server object living in the trusted process; the
child's `produce(inputs, channel)` talks to it with `channel.ask(message)`, one JSON document per line over a
pair of pipes. The child sees only the replies: the server, and whatever it holds (a trace's future, the
clock it keeps), stays in another process. Imported only by evaluators that serve, so the others pay nothing.

The child ends the session with an empty line (not a JSON document, so no message can be mistaken for it):
a channel that reaches end-of-file without it was closed by the candidate before produce returned.
"""

import json
import os
import select

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# A child whose request pipe reaches end-of-file without the closing line gets this long to exit on its own
# (a crash closes its descriptors just before the process is reaped) before it counts as having closed it.
CLOSE_GRACE_S = 0.5
_READ_CHUNK = 1 << 16


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class ServerError(Exception):
    """The evaluator's server failed (handle raised, or replied with something that is not JSON):
    not the candidate's fault. The original exception is the cause."""


class Session:
    """The harness's end: read requests, answer with `server.handle`, enforce the caps.

    After `serve` returns, `fault` says what the candidate did wrong on the channel ("" if nothing) and
    `fault_killed` whether the harness ended the child for it; `error` holds a ServerError to raise."""

    def __init__(self, server) -> None:
        self.server = server
        self.handle = server.handle
        self.req_r, self.child_req_w = os.pipe()
        self.child_rep_r, self.rep_w = os.pipe()
        os.set_blocking(self.req_r, False)
        os.set_blocking(self.rep_w, False)
        self.buffer = bytearray()
        self.closed_cleanly = False
        self.eof = False
        self.fault = ""
        self.fault_killed = False
        self.error = None
        self.requests = 0

    def child_fds(self) -> tuple:
        """(reply read end, request write end): the descriptors the child keeps, by number."""
        return self.child_rep_r, self.child_req_w

    def after_spawn(self) -> None:
        # The child's ends must not stay open here, or the harness would never see end-of-file on a close.
        for fd in (self.child_rep_r, self.child_req_w):
            os.close(fd)
        self.child_rep_r = self.child_req_w = -1

    def close(self) -> None:
        for fd in (self.req_r, self.rep_w, self.child_rep_r, self.child_req_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.req_r = self.rep_w = self.child_rep_r = self.child_req_w = -1

    def _fail(self, reason: str) -> bool:
        self.fault, self.fault_killed = reason, True
        return False

    def serve(self, pidfd, exited_now, deadline: float, clock) -> bool:
        """Answer requests until the child exits (True) or must be ended (False: the deadline passed, the
        candidate broke the protocol, or the server failed; `fault`/`error` say which)."""
        req_r = self.req_r
        watch = [req_r] if pidfd is None else [req_r, pidfd]
        poll_s = None if pidfd is not None else 0.005  # old kernels: no pidfd, poll for the exit
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                return False
            if self.eof:
                # Nothing more can arrive: wait for the exit, briefly if the channel was closed early.
                if not self.closed_cleanly:
                    return self._wait_after_close(pidfd, exited_now, min(remaining, CLOSE_GRACE_S))
                return _wait_exit(pidfd, exited_now, remaining)
            ready = select.select(watch, [], [], remaining if poll_s is None else min(remaining, poll_s))[0]
            if req_r in ready and not self._read_requests(deadline, clock, pidfd):
                return False
            if (pidfd is not None and pidfd in ready) or (pidfd is None and exited_now(0)):
                self._drain_after_exit()
                return True

    def _wait_after_close(self, pidfd, exited_now, grace: float) -> bool:
        if _wait_exit(pidfd, exited_now, grace):
            self.fault = "The candidate's process closed the session channel before produce returned."
            return True
        return self._fail("The candidate's process closed the session channel and kept running; it was ended.")

    def _drain_after_exit(self) -> None:
        """Requests still buffered when the child exited are moot; only the closing line matters."""
        try:  # bounded: descendants of the child may still hold the pipe and write into it
            while len(self.buffer) <= MAX_MESSAGE_BYTES and (chunk := os.read(self.req_r, _READ_CHUNK)):
                self.buffer += chunk
        except BlockingIOError:
            pass
        if not self.closed_cleanly:  # complete lines left unanswered: only an empty one (the closing) counts
            self.closed_cleanly = b"" in self.buffer.split(b"\n")[:-1]
        if not self.closed_cleanly:
            self.fault = "The candidate's process closed the session channel before produce returned."

    def _read_requests(self, deadline: float, clock, pidfd) -> bool:
        try:
            chunk = os.read(self.req_r, _READ_CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            self.eof = True
            return True
        buffer = self.buffer
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_MESSAGE_BYTES:
                    return self._fail(f"The candidate sent a session message over {MAX_MESSAGE_BYTES} bytes "
                                      "(the limit per message); it was ended.")
                return True
            if end == 0:  # the closing line: produce returned; nothing after it counts
                self.closed_cleanly = True
                del buffer[:]
                return True
            if end > MAX_MESSAGE_BYTES:
                return self._fail(f"The candidate sent a session message of {end} bytes, over the limit of "
                                  f"{MAX_MESSAGE_BYTES} per message; it was ended.")
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            try:
                message = json.loads(line, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                shown = line[:80].decode("utf-8", errors="replace")
                return self._fail(f"The candidate sent a malformed session message (one JSON document per line "
                                  f"expected): {type(exc).__name__}: {exc}; message began {shown!r}")
            self.requests += 1
            try:
                reply = (json.dumps(self.handle(message), allow_nan=False) + "\n").encode()
                if len(reply) > MAX_MESSAGE_BYTES + 1:  # the child reads at most that much per reply
                    raise ValueError(f"a reply of {len(reply)} bytes, over the limit of {MAX_MESSAGE_BYTES}")
            except Exception as exc:  # noqa: BLE001 - the evaluator's fault, reported as such
                err = ServerError(f"the evaluator's session server failed on request {self.requests}")
                err.__cause__ = exc
                self.error = err
                return False
            if not self._write(reply, deadline, clock, pidfd):
                return False

    def _write(self, data: bytes, deadline: float, clock, pidfd) -> bool:
        view, rep_w = memoryview(data), self.rep_w
        while view:
            try:
                view = view[os.write(rep_w, view):]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return True  # the child closed its reply end: it sees nothing more, its exit tells the rest
            remaining = deadline - clock()
            if remaining <= 0:
                return False
            # The child is not reading its replies: wait for room, for its exit, or for the deadline.
            watch = [pidfd] if pidfd is not None else []
            ready = select.select(watch, [rep_w], [], remaining if pidfd is not None else min(remaining, 0.005))
            if pidfd is not None and pidfd in ready[0]:
                return True
        return True


def _wait_exit(pidfd, exited_now, seconds: float) -> bool:
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], max(seconds, 0))[0])
    return exited_now(seconds)


class Channel:
    """The child's end, handed to `produce(inputs, channel)`: `ask(message)` sends one JSON value to the
    trusted server and returns its reply."""

    __slots__ = ("_dumps", "_loads", "_reader", "_write_fd")

    def __init__(self, reply_fd: int, request_fd: int) -> None:
        self._reader = open(reply_fd, "rb", buffering=_READ_CHUNK, closefd=True)  # noqa: SIM115 - held for the run
        self._write_fd = request_fd
        self._dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
        self._loads = json.loads

    def ask(self, message):
        """Send `message` (plain JSON: dict, list, str, number, bool, None) and block until the reply."""
        try:
            data = (self._dumps(message) + "\n").encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"channel.ask takes plain JSON (dict, list, str, finite number, bool, None): {exc}") \
                from None
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"channel.ask: the message is {len(data)} bytes, over the limit of "
                             f"{MAX_MESSAGE_BYTES}; send less per message")
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view):]
        line = self._reader.readline(MAX_MESSAGE_BYTES + 2)
        if not line.endswith(b"\n"):
            raise ConnectionError("the harness ended the session (no reply to the last message)")
        return self._loads(line)

    def close(self) -> None:
        """Send the closing line and let go of both ends (done by the harness's child runner)."""
        try:
            os.write(self._write_fd, b"\n")
        except OSError:
            pass
        for close in (self._reader.close, lambda: os.close(self._write_fd)):
            try:
                close()
            except OSError:
                pass
