"""Inside a docker sandbox container: the long-lived fork-server of the warm pool, or a one-shot harness run.

`serve CTL_DIR`: listen on CTL_DIR/fork.sock (CTL_DIR is root-only, so candidate code cannot connect); per
connection read one request, fork a trusted harness process with the harness modules already imported (no
interpreter start, no imports: that is the warm pool's saving), which answers on the same connection. The
server kills a harness that outlives its request's time limit (the in-container `timeout -k`); the host has its
own watchdog on top and replaces the whole container when that one fires.

`oneshot CTL_DIR`: read CTL_DIR/request.json, write CTL_DIR/result.json (strict isolation: a fresh container per
evaluation, run under coreutils `timeout -k` by the host).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

from . import child, spawn, trusted
from .spawn import harden_self

SOCKET_NAME = "fork.sock"
MAX_REQUEST = 64 * 1024 * 1024
KILL_GRACE_S = 2.0
REAP_INTERVAL_S = 0.05


def _read_all(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ValueError(f"request larger than {MAX_REQUEST} bytes")
        chunks.append(chunk)


def _harness_process(conn: socket.socket, request: dict) -> None:
    """The forked trusted harness: its own session, output to a log file the host reads, result on `conn`."""
    os.setsid()
    log = os.open(request.get("harness_log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    harden_self()
    if request.get("mode") in ("pytest", "collect"):
        spawn.IN_PROCESS_CHILD = child.main
    try:
        doc = trusted.respond(request)
        doc["leftovers"] = leftovers()
        conn.sendall(json.dumps(doc, allow_nan=False).encode())
    except BaseException as exc:  # noqa: BLE001 - the host gets the reason, not just a closed connection
        import traceback

        traceback.print_exc()  # into the harness log, whose tail the host reports
        try:
            conn.sendall(json.dumps({"error": f"the harness failed: {type(exc).__name__}: {exc}"}).encode())
        except (OSError, ValueError):
            pass
    finally:
        os._exit(0)


def leftovers() -> list[str]:
    """What a candidate left that would reach the next evaluation in this container: files in the shared
    tmpfs folders, System V IPC objects. The host replaces a container that has any."""
    found = []
    for folder in ("/tmp", "/dev/shm"):
        try:
            found += [f"{folder}/{name}" for name in os.listdir(folder)]
        except OSError:
            pass
    for kind in ("shm", "sem", "msg"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                found += [f"sysv {kind}"] * (len(f.readlines()) - 1)
        except OSError:
            pass
    return found[:20]


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def serve(ctl_dir: str, site_paths: list[str]) -> None:
    # The point of the warm pool for pytest tasks: the children of pytest runs are forked from this process
    # and find pytest imported. The image's packages are not on the path of an interpreter started with -I -S.
    sys.path.extend(p for p in site_paths if p not in sys.path)
    try:
        import pytest  # noqa: F401
    except ImportError:
        pass
    path = os.path.join(ctl_dir, SOCKET_NAME)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path + ".new"
    if os.path.exists(tmp):
        os.unlink(tmp)
    server.bind(tmp)
    os.chmod(tmp, 0o600)
    server.listen(16)
    os.rename(tmp, path)  # the host waits for this name: it appears only once the server accepts
    deadlines: dict[int, float] = {}  # harness pid -> when it is killed
    while True:
        # While harnesses run, wake often enough to reap them promptly; idle, sleep until a connection.
        ready = select.select([server], [], [], REAP_INTERVAL_S if deadlines else None)[0]
        if ready:
            conn, _ = server.accept()
            try:
                request = json.loads(_read_all(conn))
                limit = float(request.get("harness_timeout_s", 600.0))
            except (OSError, ValueError, TypeError) as exc:
                try:
                    conn.sendall(json.dumps({"error": f"bad request: {exc}"}).encode())
                except OSError:
                    pass
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                server.close()
                _harness_process(conn, request)
            conn.close()
            deadlines[pid] = time.monotonic() + limit + KILL_GRACE_S
        now = time.monotonic()
        for pid, deadline in list(deadlines.items()):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                deadlines.pop(pid)
            elif now >= deadline:
                _kill(pid)  # its children die with it (PDEATHSIG) and the host sees the connection close


def oneshot(ctl_dir: str) -> None:
    with open(os.path.join(ctl_dir, "request.json"), "rb") as f:
        request = json.loads(f.read())
    harden_self()
    doc = trusted.respond(request)
    tmp = os.path.join(ctl_dir, "result.json.new")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps(doc, allow_nan=False))
    os.rename(tmp, os.path.join(ctl_dir, "result.json"))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("serve", "oneshot"):
        sys.exit("usage: run_container.py serve CTL_DIR [SITE_PATH...] | oneshot CTL_DIR")
    if argv[0] == "serve":
        serve(argv[1], argv[2:])
    else:
        oneshot(argv[1])
