"""Local process sandbox: a fresh temp dir per evaluation, the harness in its own session, limits on the
candidate's processes, a wall-clock watchdog that kills the whole group, a scrubbed environment.

Weaker than the docker backend: no network or filesystem namespace. When evolver runs as root, candidate
code runs as `nobody` so it cannot write outside its own folder or read the harness's results channel.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from .base import CHILD_ENV_BASE, SandboxJob, SandboxRun, build_request, harness_package_dir, parse_document
from .workdir import fill_workdir

DIR_PREFIX = "evolver-sbx-"
STDOUT_CAP = 256 * 1024 * 1024  # the harness's result document
STDERR_KEEP = 32 * 1024


class _CappedBuffer:
    """What a pipe delivered: the head (up to `cap`), or head and tail (`keep` bytes each side)."""

    def __init__(self, cap: int | None = None, keep: int | None = None) -> None:
        self.cap, self.keep = cap, keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        limit = self.cap if self.cap is not None else self.keep
        assert limit is not None
        room = limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if self.keep is not None and chunk:
            self.tail = (self.tail + chunk)[-self.keep :]

    def text(self) -> str:
        data = bytes(self.head)
        if self.tail:
            omitted = self.total - len(self.head) - len(self.tail)
            sep = f"\n[... {omitted} bytes omitted ...]\n".encode() if omitted > 0 else b""
            data += sep + bytes(self.tail)
        return data.decode("utf-8", errors="replace")


def sweep_stale_dirs(base: str | None = None) -> int:
    """Remove sandbox dirs left by evolver processes that no longer exist (e.g. after kill -9)."""
    base_dir = Path(base or tempfile.gettempdir())
    removed = 0
    for d in base_dir.glob(DIR_PREFIX + "*"):
        try:
            pid = int(d.name[len(DIR_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@lru_cache(maxsize=1)
def _site_paths() -> tuple[str, ...]:
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return tuple(p for i, p in enumerate(paths) if p not in paths[:i] and os.path.isdir(p))


@lru_cache(maxsize=1)
def _child_identity() -> tuple[int | None, int | None, str, str]:
    """(uid, gid, python, note): who runs candidate code and with which interpreter."""
    if os.geteuid() != 0:
        return None, None, sys.executable, "candidate runs as the invoking user"
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None, None, sys.executable, "running as root and no 'nobody' user: candidate runs as root"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    options = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}",
               f"/usr/local/bin/python{version}"]
    for py in dict.fromkeys(options):
        try:
            out = subprocess.run([py, "-I", "-S", "-c", "import sys;print('%d.%d' % sys.version_info[:2])"],
                                 user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                                 capture_output=True, text=True, timeout=20, cwd="/")
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return nobody.pw_uid, nobody.pw_gid, py, f"candidate runs as an unprivileged uid of its own ({py})"
    return None, None, sys.executable, (
        f"running as root and no Python {version} is executable by 'nobody': candidate runs as root "
        f"(install python{version} system-wide or use the docker backend)")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# When root, each concurrent sandbox runs its candidate under a uid of its own (unnamed, above the usual
# ranges), so parallel batches cannot signal each other or share one process budget (RLIMIT_NPROC counts
# per user). Each evolver process holds a block of UID_SLOTS uids for its lifetime, by an flock on the
# block's lock file, so two evolver processes on one machine never share a uid.
UID_BASE = 200_000
UID_SLOTS = 64
UID_BLOCKS = 10_000
UID_LOCK_DIR = Path("/run/evolver-uids")
_uid_block_lock: list = []  # the open lock file, held until the process exits


@lru_cache(maxsize=1)
def _uid_block() -> int:
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            UID_LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            start = os.getpid() % UID_BLOCKS  # where to start looking: usually free at once
            for k in range(UID_BLOCKS):
                block = (start + k) % UID_BLOCKS
                f = open(UID_LOCK_DIR / f"{block}.lock", "a")  # noqa: SIM115 - held for the process's life
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                _uid_block_lock.append(f)
                return block
    return os.getpid() % UID_BLOCKS  # without root there is no uid to hand out anyway


def slot_uid(slot: int) -> int:
    return UID_BASE + _uid_block() * UID_SLOTS + slot


def compile_harness(harness_dir: Path) -> None:
    """Byte-compile the harness once: sandbox processes run with -B (they never write .pyc files), and
    compiling its modules from source at every start cost ~10 ms per evaluation. A no-op when up to date;
    a read-only installation already ships its .pyc files."""
    with contextlib.suppress(OSError):
        compileall.compile_dir(str(harness_dir), quiet=2)


def _traversable_by_others(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in (p, *p.parents))


class ProcessSandbox:
    name = "process"

    def __init__(self, base_dir: str | None = None) -> None:
        self.harness_dir = harness_package_dir()
        compile_harness(self.harness_dir)
        self.uid, self.gid, self.child_python, self.identity_note = _child_identity()
        self.base_dir = base_dir or tempfile.gettempdir()
        if self.uid is not None and not _traversable_by_others(self.base_dir):
            # The candidate runs as another user and must reach its folder: a private TMPDIR will not do.
            self.identity_note += f" (sandbox dirs in /tmp: {self.base_dir} is not reachable by that user)"
            self.base_dir = "/tmp"
        sweep_stale_dirs(self.base_dir)
        self._live: set[int] = set()  # process groups of running harnesses, killed by close()
        self._free_slots = list(range(UID_SLOTS))
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "candidate_user": self.identity_note,
            "network": "not isolated (use the docker backend for no-network)",
            "filesystem": "fresh temp dir per evaluation; task files read-only to the candidate when it runs "
                          "as another user",
            "limits": "rlimits: CPU, address space, file size, open files, processes; wall-clock watchdog",
            "environment": f"scrubbed: only {', '.join(sorted(CHILD_ENV_BASE))}, HOME, TMPDIR",
        }

    def close(self) -> None:
        """Kill every harness still running (Ctrl-C, errors): their batches are reported, not cached."""
        with self._lock:
            live = list(self._live)
        for pgid in live:
            _kill_group(pgid)

    def _take_uid(self) -> tuple[int | None, int | None, int | None]:
        """(slot, uid, gid) for one run: a uid of its own when candidates run as another user."""
        if self.uid is None:
            return None, None, None
        with self._lock:
            if not self._free_slots:
                raise RuntimeError(f"more than {UID_SLOTS} concurrent process sandboxes")
            slot = self._free_slots.pop()
        uid = slot_uid(slot)
        return slot, uid, uid

    def _release(self, slot: int | None) -> None:
        if slot is not None:
            with self._lock:
                self._free_slots.append(slot)

    def _prepare_dirs(self, job: SandboxJob, uid: int | None, gid: int | None) -> tuple[Path, Path, Path, Path]:
        root = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=self.base_dir))
        return (root, *fill_workdir(root, job, uid, gid))

    def run(self, job: SandboxJob) -> SandboxRun:
        slot, uid, gid = self._take_uid()
        try:
            return self._run(job, uid, gid)
        finally:
            self._release(slot)

    def _run(self, job: SandboxJob, uid: int | None, gid: int | None) -> SandboxRun:
        started = time.monotonic()
        root, candidate, task, scratch = self._prepare_dirs(job, uid, gid)
        nonce = secrets.token_hex(16)
        request = build_request(
            job, sandbox_root=str(root), candidate_dir=str(candidate), task_dir=str(task), nonce=nonce,
            child_python=self.child_python, child_uid=uid, child_gid=gid,
            site_paths=list(_site_paths()), scratch_dir=str(scratch),
        )
        argv = [sys.executable, "-I", "-S", "-B", str(self.harness_dir / "run_harness.py")]
        env = dict(CHILD_ENV_BASE, HOME=str(root), TMPDIR=str(root))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=root, env=env, start_new_session=True)
            with self._lock:
                self._live.add(proc.pid)
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(request).encode())  # read whole by the harness before it writes
                proc.stdin.close()
            except BrokenPipeError:
                pass
            out, err = _CappedBuffer(cap=STDOUT_CAP), _CappedBuffer(keep=STDERR_KEEP)
            try:
                status, usage, timed_out = _communicate(proc, out, err, job.harness_timeout_s())
            finally:
                with self._lock:
                    self._live.discard(proc.pid)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        wall = time.monotonic() - started
        return _to_run(self.name, status, usage, timed_out, wall, out, err, nonce, job)


def _communicate(proc: subprocess.Popen, out: _CappedBuffer, err: _CappedBuffer, timeout_s: float):
    """Drain the harness's stdout and stderr and wait for it, in one select loop (no reader threads), under
    a wall-clock watchdog: SIGTERM to its session on expiry, SIGKILL 2 s later."""
    assert proc.stdout is not None and proc.stderr is not None
    pipes = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    pidfd = os.pidfd_open(proc.pid)
    deadline = time.monotonic() + timeout_s
    timed_out, killed, exited = False, False, False
    try:
        while pipes or not exited:
            now = time.monotonic()
            if now >= deadline:
                if exited or killed:
                    break  # something of the harness's session still holds a pipe: stop reading
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                killed = True
                deadline = now + 2.0
                continue
            waiting = [*pipes, *([] if exited else [pidfd])]
            ready = select.select(waiting, [], [], deadline - now)[0]
            for fd in ready:
                if fd == pidfd:
                    exited = True
                    _kill_group(proc.pid)  # whatever it left in its session would hold the pipes open
                    deadline = min(deadline, time.monotonic() + 5.0)
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    pipes[fd].feed(chunk)
                else:
                    del pipes[fd]
        if not exited:
            _kill_group(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(proc.pid)  # anything left in the harness's session
    return status, usage, timed_out


def _to_run(backend: str, status: int, usage, timed_out: bool, wall: float, out: _CappedBuffer,
            err: _CappedBuffer, nonce: str, job: SandboxJob) -> SandboxRun:
    stdout = bytes(out.head).decode("utf-8", errors="replace")
    stderr = err.text()
    payload, error = None, None
    if timed_out:
        error = f"the harness exceeded its time limit ({job.harness_timeout_s():g} s) and was killed"
    else:
        payload, error = parse_document(stdout, nonce)
        if payload is None and not stdout.strip():
            code = os.waitstatus_to_exitcode(status)
            error = f"the harness exited ({code}) without a result document: {stderr[-2000:].strip()}"
    memory_exceeded = bool(payload and any(r.get("status") == "memory" for r in payload.get("results", [])))
    return SandboxRun(
        backend=backend,
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        timed_out=timed_out,
        memory_exceeded=memory_exceeded,
        wall_s=round(wall, 6),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 6),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 3),
        stdout_tail=stdout[-2000:] if payload is None else "",
        stderr_tail=stderr[-4000:],
        payload=payload,
        error=error,
    )
