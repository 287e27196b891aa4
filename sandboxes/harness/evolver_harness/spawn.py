"""Run one untrusted child process under limits and measure it from the outside.

The child's time and memory come from wait4's rusage and the harness's own monotonic clock, never from the
child, so a candidate that fakes its clock cannot look faster. The harness is a child subreaper: whatever the
candidate forks and orphans comes back to it and is killed before the next instance runs.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import select
import signal
import time
from collections import namedtuple

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
TERM_GRACE_S = 0.5
# Set by the docker pool's fork-server for pytest runs only: children are then forked from a process that has
# pytest imported already, without exec (pytest mode trusts the candidate's process anyway, see trusted.py).
# An evaluator-mode child always execs a fresh interpreter that holds nothing of the trusted side.
IN_PROCESS_CHILD = None

_libc = ctypes.CDLL(None, use_errno=True)


def harden_self() -> None:
    """Make the trusted harness unreadable to same-uid processes, adopt orphaned descendants, and die with
    the process that started it (a kill -9 of evolver must not leave evaluations running)."""
    parent = os.getppid()
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the starter died before the line above took effect
        os._exit(1)


# Plain namedtuples: dataclasses and typing would add ~25 ms to the start of every sandbox process.
ChildLimits = namedtuple(
    "ChildLimits", "timeout_s memory_mb file_size_bytes max_processes open_files", defaults=(256,))


# Who the child runs as: uid None keeps the harness's uid (non-root hosts, containers).
ChildIdentity = namedtuple("ChildIdentity", "uid gid", defaults=(None, None))


# session_fault: what the candidate did wrong on the session channel ("" if nothing, or no session);
# session_killed: whether the harness ended the child for it (else the child had exited by itself).
ChildRun = namedtuple(
    "ChildRun",
    "exit_code signal timed_out wall_s cpu_s peak_rss_mb stdout stderr stdout_bytes stderr_bytes result_text "
    "session_fault session_killed", defaults=("", False))


def _count_processes(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _descendants(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_leftovers() -> int:
    """Kill every descendant of this process (escaped daemons, fork-bomb remains). Returns how many."""
    me, killed = os.getpid(), 0
    for _ in range(50):
        pids = _descendants(me)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.005)
        _reap_zombies()
    _reap_zombies()
    return killed


def _read_capped(path: str, keep: int) -> tuple[str, int]:
    """Head and tail of a file, decoded leniently (candidate output is data, not necessarily UTF-8)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= 2 * keep:
            data = f.read()
            return data.decode("utf-8", errors="replace"), size
        head = f.read(keep)
        f.seek(size - keep)
        tail = f.read(keep)
    omitted = size - 2 * keep
    text = (
        head.decode("utf-8", errors="replace")
        + f"\n[... {omitted} bytes omitted ...]\n"
        + tail.decode("utf-8", errors="replace")
    )
    return text, size


def _spawn(argv: list[str], stdio: tuple[int, int, int], keep_fds: tuple, cwd: str, env: dict[str, str],
           prepare) -> int:
    """fork + execve with `prepare()` run in between (limits, uid). Not subprocess: importing it costs ~5 ms
    of every harness start, and the harness is single-threaded, so a plain fork is safe."""
    err_r, err_w = os.pipe()  # both close-on-exec: EOF on a successful exec, the error text otherwise
    pid = os.fork()
    if pid == 0:
        try:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            low = 3
            for fd in sorted((*keep_fds, err_w)):  # close everything else, keep these by number
                os.closerange(low, fd)
                low = fd + 1
                if fd != err_w:
                    os.set_inheritable(fd, True)
            os.closerange(low, 65536)
            os.chdir(cwd)
            prepare()
            if IN_PROCESS_CHILD is not None:  # no exec: run the child's code in this pre-imported copy
                os.environ.clear()
                os.environ.update(env)
                os.close(err_w)
                IN_PROCESS_CHILD(int(argv[-1]))  # ends the process itself
                os._exit(3)
            os.execve(argv[0], argv, env)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent through the pipe
            try:
                os.write(err_w, f"{type(exc).__name__}: {exc}".encode(errors="replace"))
            finally:
                os._exit(127)
    os.close(err_w)
    try:
        chunks = []
        while chunk := os.read(err_r, 4096):
            chunks.append(chunk)
    finally:
        os.close(err_r)
    if chunks:
        os.waitpid(pid, 0)
        raise OSError(f"could not start the candidate's process: {b''.join(chunks).decode(errors='replace')}")
    return pid


def _wait(pid: int, timeout_s: float, session=None) -> tuple[int, resource.struct_rusage, bool]:
    """Wait for the child with a wall-clock limit; on expiry SIGTERM its group, then SIGKILL. With a session,
    answer the child's requests meanwhile; a protocol fault or a server failure ends the child at once."""
    deadline = time.monotonic() + timeout_s
    reaped: list[tuple[int, resource.struct_rusage]] = []
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None  # kernels before 5.3: poll with WNOHANG instead

    def exited_within(seconds: float) -> bool:
        if pidfd is not None:
            return bool(select.select([pidfd], [], [], max(seconds, 0))[0])
        deadline = time.monotonic() + seconds
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                reaped.append((status, usage))
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    timed_out = False
    try:
        if session is not None and not session.serve(pidfd, exited_within, deadline, time.monotonic):
            if session.fault_killed or session.error is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                exited_within(5.0)
            else:
                timed_out = True
        if timed_out or (session is None and not exited_within(timeout_s)):
            timed_out = True
            for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 5.0)):
                try:  # not contextlib: its import costs start-up time in every sandbox process
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    pass
                if exited_within(grace):
                    break
        if not reaped:
            _, status, usage = os.wait4(pid, 0)
            reaped.append((status, usage))
    finally:
        if pidfd is not None:
            os.close(pidfd)
    status, usage = reaped[0]
    return status, usage, timed_out


def run_child(
    argv: list[str],
    job: dict,
    io_dir: str,
    tag: str,
    limits: ChildLimits,
    identity: ChildIdentity,
    cwd: str,
    env: dict[str, str],
    keep_output: int,
    session=None,
) -> ChildRun:
    """Run the child to its end. `session` (a session.Session) serves the child's requests while it runs;
    its descriptor numbers must already be in `job`. A failure of the evaluator's server is raised (as
    session.ServerError) once the child is gone."""
    job_path, out_path, err_path, res_path = (
        os.path.join(io_dir, f"{name}-{tag}") for name in ("job", "stdout", "stderr", "result"))
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    nproc_base = _count_processes(identity.uid if identity.uid is not None else os.getuid())

    res_fd = os.open(res_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def prepare_child() -> None:  # runs in the forked child before exec
        os.setsid()
        cpu = math.ceil(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        nproc = nproc_base + limits.max_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if identity.uid is not None:
            os.setgroups([])
            os.setgid(identity.gid if identity.gid is not None else identity.uid)
            os.setuid(identity.uid)
        try:  # an OOM killer (host or container) takes the candidate first, never the harness
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        # Set after the uid change, which clears it: the child must not outlive a killed harness.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    # CPU time is what the harness's reaped children used meanwhile, not the child's wait4 rusage alone: that
    # misses the processes the child forked and never waited for (adopted by this subreaper and reaped in
    # kill_leftovers), so a candidate could hide its work in a worker and look cheap.
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    with open(job_path, "rb") as stdin, open(out_path, "wb") as stdout, open(err_path, "wb") as stderr:
        try:
            keep = (res_fd, *session.child_fds()) if session is not None else (res_fd,)
            pid = _spawn([*argv, str(res_fd)], (stdin.fileno(), stdout.fileno(), stderr.fileno()), keep, cwd,
                         env, prepare_child)
        finally:
            os.close(res_fd)
            if session is not None:
                session.after_spawn()
        try:
            status, usage, timed_out = _wait(pid, limits.timeout_s, session)
        finally:
            if session is not None:
                session.close()
    wall = time.monotonic() - start
    kill_leftovers()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    out_text, out_bytes = _read_capped(out_path, keep_output)
    err_text, err_bytes = _read_capped(err_path, keep_output)
    with open(res_path, encoding="utf-8", errors="replace") as f:
        result_text = f.read()
    for p in (job_path, out_path, err_path, res_path):
        try:  # not contextlib: its import costs start-up time in every sandbox process
            os.unlink(p)
        except OSError:
            pass
    if session is not None and session.error is not None:
        raise session.error
    return ChildRun(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        timed_out=timed_out,
        wall_s=round(wall, 6),
        cpu_s=round(max(cpu, usage.ru_utime + usage.ru_stime), 6),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 3),
        stdout=out_text,
        stderr=err_text,
        stdout_bytes=out_bytes,
        stderr_bytes=err_bytes,
        result_text=result_text,
        session_fault=session.fault if session is not None else "",
        session_killed=session.fault_killed if session is not None else False,
    )
