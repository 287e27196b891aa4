"""Hardened Docker sandbox: a warm pool of containers with an in-container fork-server, or one fresh container
per evaluation (`isolation = "strict"`).

Every container: no network, read-only root, size-capped tmpfs /tmp, the evaluation folders bind-mounted from
size-capped host tmpfs mounts, all capabilities dropped except the three the trusted harness needs to start the
candidate under an unprivileged uid and kill what it leaves (SETUID, SETGID, KILL; the candidate itself runs
with none), no-new-privileges, pids and memory limits (memory = memory+swap), a CPU quota, an init process,
capped logs, and labels naming the run and the evolver process, which the sweeper uses after a kill -9.
Nothing of the host's environment goes in.

A failure of the engine or of a container is reported as this evaluation's sandbox error (never raised), so
other evaluations in flight are not torn down with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import (
    CHILD_ENV_BASE,
    SandboxJob,
    SandboxLimits,
    SandboxRun,
    build_request,
    harness_package_dir,
    parse_document,
)
from .docker_host import (
    LABEL_HOST,
    LABEL_PID,
    LABEL_RUN,
    LABEL_SANDBOX,
    ContainerMounts,
    OomCounter,
    sweep_stale,
)
from .process import compile_harness, slot_uid
from .workdir import fill_workdir

HARNESS_MOUNT = "/opt/evolver/evolver_harness"
SANDBOX_MOUNT = "/sandbox"  # what the candidate may write: its folder and scratch
TRUSTED_MOUNT = "/evolver"  # the harness's: control socket, task files, results, logs
PYTHON = "/usr/bin/python3"
SITE_PATHS = ["/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3/dist-packages",
              "/usr/lib/python3.11/dist-packages"]
TMP_MB = 64
TRUSTED_TMPFS_MB = 128  # plus the task's files and room for each instance's captured output
HARNESS_MEMORY_MB = 192  # the fork-server and the trusted harness, on top of the candidate's limit
HOST_SLACK_S = 15.0  # the host watchdog fires this long after the in-container one should have
READY_TIMEOUT_S = 30.0
RESULT_CAP = 256 * 1024 * 1024
# Statuses after which a pooled container is replaced rather than reused: whatever caused them may have left
# state behind (a full tmpfs, a process the harness could not kill, a fragmented cgroup).
RECYCLE_STATUSES = frozenset({"timeout", "memory", "output_limit", "crashed"})
UNAVAILABLE = ("no Docker engine answers; start one (scripts/start-docker as root) or use backend = \"process\"")


def work_tmpfs_mb(limits: SandboxLimits) -> int:
    return max(256, 3 * limits.output_limit_mb)


def trusted_tmpfs_mb(limits: SandboxLimits, job: SandboxJob) -> int:
    task_mb = sum(p.stat().st_size for p in job.task_files) // (1024 * 1024) + 1
    return TRUSTED_TMPFS_MB + 3 * limits.output_limit_mb + task_mb


def container_memory_mb(limits: SandboxLimits, trusted_mb: int) -> int:
    # tmpfs pages are charged to the container's memory cgroup, so both tmpfs sizes are part of its budget.
    return limits.memory_mb + TMP_MB + work_tmpfs_mb(limits) + trusted_mb + HARNESS_MEMORY_MB


@dataclass
class _Container:
    container: Any
    mounts: ContainerMounts
    uid: int
    slot: int
    limits: SandboxLimits
    oom: OomCounter
    evaluations: int = 0
    healthy: bool = True

    @property
    def socket_path(self) -> Path:
        return self.mounts.trusted.path / "ctl" / "fork.sock"


class _InfrastructureError(Exception):
    """The engine or a container failed: the evaluation's sandbox error, not the candidate's fault."""


class DockerSandbox:
    name = "docker"

    def __init__(self, client: Any, image: str, *, isolation: str = "pool", recycle_after: int = 50,
                 run_label: str = "") -> None:
        if isolation not in ("pool", "strict"):
            raise ValueError(f"isolation: expected pool or strict, found {isolation!r}")
        self.client = client
        self.image = image
        self.isolation = isolation
        self.recycle_after = max(1, recycle_after)
        self.run_label = re.sub(r"[^A-Za-z0-9_.]", "_", run_label)[:40] or "eval"
        self.harness_dir = harness_package_dir()
        compile_harness(self.harness_dir)  # bind-mounted read-only: its .pyc must exist beforehand
        sweep_stale(client)
        self._lock = threading.Lock()
        self._idle: list[_Container] = []
        self._live: dict[int, _Container] = {}  # every container of this sandbox; whoever pops one removes it
        self._free_slots = list(range(64))
        self._counter = 0
        self._recyclers: list[threading.Thread] = []
        self._capped = True

    # -- description ----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "image": self.image,
            "isolation": "warm pool, fork-server per evaluation" if self.isolation == "pool"
            else "one fresh container per evaluation",
            "network": "none (network_mode=none)",
            "filesystem": f"read-only root; /tmp tmpfs capped at {TMP_MB} MB; evaluation folders on host tmpfs "
                          + ("mounts capped per container" if self._capped else "folders (not capped)"),
            "candidate_user": "an unprivileged uid of its own, no capabilities; the trusted harness keeps "
                              "SETUID, SETGID and KILL only",
            "limits": "memory = memory+swap, pids, CPU quota, rlimits per child; in-container and host watchdogs",
            "environment": f"only {', '.join(sorted(CHILD_ENV_BASE))}, HOME, TMPDIR",
        }

    # -- containers -----------------------------------------------------------------------------------
    def _labels(self) -> dict[str, str]:
        return {LABEL_SANDBOX: "1", LABEL_RUN: self.run_label, LABEL_PID: str(os.getpid()),
                LABEL_HOST: socket.gethostname()}

    def _start(self, job: SandboxJob, command: list[str],
               before_start: Callable[[_Container], None] | None = None) -> _Container:
        """A started container with its mounts, registered in _live (so close() removes it)."""
        from docker.types import LogConfig, Mount

        limits = job.limits
        with self._lock:
            if not self._free_slots:
                raise _InfrastructureError("more than 64 concurrent docker sandboxes")
            slot = self._free_slots.pop()
        container, mounts = None, None
        try:
            trusted_mb = trusted_tmpfs_mb(limits, job)
            mounts = ContainerMounts.create(self.run_label, trusted_mb, work_tmpfs_mb(limits))
            self._capped = mounts.capped
            memory = f"{container_memory_mb(limits, trusted_mb)}m"
            container = self.client.containers.create(
                self.image, command=command, user="0:0", working_dir=SANDBOX_MOUNT,
                environment=dict(CHILD_ENV_BASE, HOME="/tmp"), network_mode="none", read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={TMP_MB}m,mode=1777"}, shm_size="16m",
                mounts=[Mount(SANDBOX_MOUNT, str(mounts.work.path), type="bind"),
                        Mount(TRUSTED_MOUNT, str(mounts.trusted.path), type="bind"),
                        Mount(HARNESS_MOUNT, str(self.harness_dir), type="bind", read_only=True)],
                cap_drop=["ALL"], cap_add=["SETUID", "SETGID", "KILL"], security_opt=["no-new-privileges"],
                # SysV shared memory dies with its last user: it cannot carry memory or data to the next one.
                sysctls={"kernel.shm_rmid_forced": "1"},
                pids_limit=limits.max_processes + 32, mem_limit=memory, memswap_limit=memory,
                nano_cpus=max(1, int(limits.cpus * 1e9)), init=True, ipc_mode="private",
                log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
                labels=self._labels(), detach=True)
            box = _Container(container, mounts, slot_uid(slot), slot, limits, OomCounter(None))
            with self._lock:
                self._live[id(box)] = box
        except BaseException:
            self._remove_parts(slot, mounts, container)
            raise
        try:
            if before_start is not None:
                before_start(box)
            container.start()
            box.oom = OomCounter.of(container)
        except BaseException:
            self._discard(box)
            raise
        return box

    def _start_pooled(self, job: SandboxJob) -> _Container:
        command = [PYTHON, "-I", "-S", "-B", f"{HARNESS_MOUNT}/run_container.py", "serve",
                   f"{TRUSTED_MOUNT}/ctl", *SITE_PATHS]
        box = self._start(job, command)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            polls = 0
            while not box.socket_path.exists():
                polls += 1
                if polls % 50 == 0:  # every ~0.25 s: a container that exited will never answer
                    box.container.reload()
                    if box.container.status not in ("created", "running"):
                        raise _InfrastructureError(self._startup_failure(box, f"exited ({box.container.status})"))
                if time.monotonic() > deadline:
                    raise _InfrastructureError(self._startup_failure(box, f"no answer in {READY_TIMEOUT_S:g} s"))
                time.sleep(0.005)
        except BaseException:
            self._discard(box)
            raise
        return box

    def _startup_failure(self, box: _Container, what: str) -> str:
        import docker.errors

        logs = ""
        with contextlib.suppress(docker.errors.APIError):
            logs = box.container.logs(tail=30).decode("utf-8", "replace")
        return (f"the sandbox container ({self.image}) did not start its fork-server: {what}; the image needs "
                f"{PYTHON}\n{logs}")

    def _remove_parts(self, slot: int, mounts: ContainerMounts | None, container: Any) -> None:
        import docker.errors

        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        if mounts is not None:
            mounts.remove()
        with self._lock:
            self._free_slots.append(slot)

    def _discard(self, box: _Container) -> None:
        """Remove a container, once: only the caller that takes it out of _live does the work."""
        with self._lock:
            if self._live.pop(id(box), None) is None:
                return
            if box in self._idle:
                self._idle.remove(box)
        self._remove_parts(box.slot, box.mounts, box.container)

    def _acquire(self, job: SandboxJob) -> _Container:
        with self._lock:
            for i, box in enumerate(self._idle):
                if box.limits == job.limits:
                    return self._idle.pop(i)
        return self._start_pooled(job)

    def _release(self, box: _Container) -> None:
        if box.healthy and box.evaluations < self.recycle_after:
            with self._lock:
                if id(box) in self._live:  # not removed by close() meanwhile
                    self._idle.append(box)
                    return
        # Removing a container takes a few hundred ms: not on the evaluation's path.
        thread = threading.Thread(target=self._discard, args=(box,), daemon=True, name="evolver-recycle")
        with self._lock:
            self._recyclers = [t for t in self._recyclers if t.is_alive()] + [thread]
        thread.start()

    def close(self) -> None:
        """Remove every container of this sandbox (idle or busy: busy evaluations end as sandbox errors).
        The sandbox stays usable: a later run starts new containers."""
        with self._lock:
            boxes = list(self._live.values())
            recyclers = list(self._recyclers)
        for box in boxes:
            self._discard(box)
        for thread in recyclers:
            thread.join(timeout=30)

    # -- evaluations ----------------------------------------------------------------------------------
    def run(self, job: SandboxJob) -> SandboxRun:
        import docker.errors
        import requests.exceptions

        started = time.monotonic()
        try:
            if self.isolation == "strict":
                return self._run_oneshot(job, started)
            box = self._acquire(job)
            try:
                return self._run_pooled(box, job, started)
            except BaseException:
                box.healthy = False
                raise
            finally:
                self._release(box)
        except (_InfrastructureError, docker.errors.DockerException, requests.exceptions.RequestException,
                OSError) as exc:
            return self._failed(f"the docker sandbox failed: {type(exc).__name__}: {exc}", started)

    def _failed(self, error: str, started: float, timed_out: bool = False) -> SandboxRun:
        return SandboxRun(backend=self.name, exit_code=None, signal=None, timed_out=timed_out,
                          memory_exceeded=False, wall_s=round(time.monotonic() - started, 6), cpu_s=0.0,
                          peak_rss_mb=0.0, stdout_tail="", stderr_tail="", payload=None, error=error)

    def _request(self, job: SandboxJob, mounts: ContainerMounts, name: str, uid: int,
                 nonce: str) -> tuple[dict, Path, Path]:
        """The harness's request for one evaluation, its folders filled; and their host paths."""
        trusted, work = mounts.trusted.path / "evals" / name, mounts.work.path / name
        trusted.mkdir()
        work.mkdir()
        trusted_c, work_c = f"{TRUSTED_MOUNT}/evals/{name}", f"{SANDBOX_MOUNT}/{name}"
        fill_workdir(trusted, job, uid, uid, writable_root=work)
        request = build_request(
            job, sandbox_root=trusted_c, candidate_dir=f"{work_c}/candidate", task_dir=f"{trusted_c}/task",
            nonce=nonce, child_python=PYTHON, child_uid=uid, child_gid=uid, site_paths=SITE_PATHS,
            scratch_dir=f"{work_c}/scratch")
        request["harness_timeout_s"] = job.harness_timeout_s()
        request["harness_log"] = f"{trusted_c}/harness.log"
        return request, trusted, work

    def _run_pooled(self, box: _Container, job: SandboxJob, started: float) -> SandboxRun:
        with self._lock:
            self._counter += 1
            name = str(self._counter)
        nonce = secrets.token_hex(16)
        box.evaluations += 1
        trusted, work = box.mounts.trusted.path / "evals" / name, box.mounts.work.path / name
        try:
            request, trusted, work = self._request(job, box.mounts, name, box.uid, nonce)
            oom_before = box.oom.read()
            text, timed_out, error = self._exchange(box, request, job.harness_timeout_s() + HOST_SLACK_S)
            oom_kills = box.oom.read() - oom_before
            log = _tail(trusted / "harness.log", 4000)
        finally:
            shutil.rmtree(trusted, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        if timed_out:
            box.healthy = False
            self._kill(box)  # the host watchdog: nothing of this container is trusted to stop by itself
            error = f"the harness exceeded its time limit ({job.harness_timeout_s():g} s); container replaced"
        elif error is not None and time.monotonic() - started >= job.harness_timeout_s():
            timed_out = True  # the fork-server's own watchdog ended it
            error = f"the harness exceeded its time limit ({job.harness_timeout_s():g} s) and was killed"
        elif error is not None and oom_kills:
            error += " (the container's OOM killer fired)"
        return self._finish(box, job, text, nonce, error, timed_out, oom_kills > 0, log, started)

    def _kill(self, box: _Container) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.APIError):
            box.container.kill()

    def _exchange(self, box: _Container, request: dict, timeout_s: float) -> tuple[str, bool, str | None]:
        """Send the request to the fork-server; (result text, timed out, error)."""
        data = bytearray()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout_s)
                conn.connect(str(box.socket_path))
                conn.sendall(json.dumps(request).encode())
                conn.shutdown(socket.SHUT_WR)
                while chunk := conn.recv(1 << 20):
                    data += chunk
                    if len(data) > RESULT_CAP:
                        return "", False, f"the harness's result exceeded {RESULT_CAP} bytes"
        except TimeoutError:
            return "", True, None
        except OSError as exc:
            box.healthy = False
            return "", False, f"lost the sandbox container's fork-server: {exc}"
        if not data:
            box.healthy = False
            return "", False, "the sandbox's harness ended without a result (killed inside the container)"
        return data.decode("utf-8", errors="replace"), False, None

    def _finish(self, box: _Container | None, job: SandboxJob, text: str, nonce: str, error: str | None,
                timed_out: bool, oom: bool, log: str, started: float) -> SandboxRun:
        payload = None
        if error is None:
            payload, error = parse_document(text, nonce)
        if payload is not None and oom:
            _mark_oom(payload, job.limits)
        results = (payload or {}).get("results") or []
        if box is not None and (error is not None or oom or payload is None or payload.get("leftovers")
                                or any(r.get("status") in RECYCLE_STATUSES for r in results)):
            box.healthy = False  # e.g. files left in /tmp: the next candidate must not find them
        memory = oom or any(r.get("status") == "memory" for r in results)
        wall = time.monotonic() - started
        return SandboxRun(
            backend=self.name, exit_code=0 if payload is not None else None, signal=None, timed_out=timed_out,
            memory_exceeded=memory, wall_s=round(wall, 6), cpu_s=0.0, peak_rss_mb=0.0,
            stdout_tail=text[-2000:] if payload is None else "", stderr_tail=log, payload=payload, error=error)

    def _write_request(self, job: SandboxJob, box: _Container, nonce: str) -> None:
        """A one-shot container reads its request as it starts: written between create and start."""
        request, _, _ = self._request(job, box.mounts, "0", box.uid, nonce)
        (box.mounts.trusted.path / "ctl" / "request.json").write_text(json.dumps(request))

    def _run_oneshot(self, job: SandboxJob, started: float) -> SandboxRun:
        """Strict isolation: create, fill, start, wait, remove one container, under `timeout -k` inside."""
        import requests.exceptions

        limit = job.harness_timeout_s()
        command = ["timeout", "-k", "2", f"{limit:g}", PYTHON, "-I", "-S", "-B",
                   f"{HARNESS_MOUNT}/run_container.py", "oneshot", f"{TRUSTED_MOUNT}/ctl"]
        nonce = secrets.token_hex(16)
        box = None
        try:
            box = self._start(job, command, before_start=lambda b: self._write_request(job, b, nonce))
            timed_out = False
            try:
                box.container.wait(timeout=limit + HOST_SLACK_S)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                self._kill(box)
            box.container.reload()
            state = box.container.attrs.get("State", {})
            exit_code = state.get("ExitCode")
            result = box.mounts.trusted.path / "ctl" / "result.json"
            text = result.read_text(encoding="utf-8", errors="replace") if result.exists() else ""
            error = None
            if not text:
                timed_out = timed_out or exit_code in (124, 137)
                error = (f"the harness exceeded its time limit ({limit:g} s) and was killed" if timed_out
                         else f"the harness exited ({exit_code}) without a result document")
            log = _tail(box.mounts.trusted.path / "evals" / "0" / "harness.log", 4000)
            return self._finish(None, job, text, nonce, error, timed_out, bool(state.get("OOMKilled")), log,
                                started)
        finally:
            if box is not None:
                self._discard(box)


def _tail(path: Path, keep: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - keep))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _mark_oom(payload: dict, limits: SandboxLimits) -> None:
    """The container's OOM killer ended a process: a child killed by SIGKILL ran out of memory."""
    for rec in payload.get("results") or []:
        if rec.get("status") in ("crashed", "no_output", "error") and rec.get("signal") == 9:
            rec["status"] = "memory"
            rec["feedback"] = (f"Ran out of memory: killed by the container's OOM killer (memory limit "
                               f"{limits.memory_mb} MB for the candidate).\n{rec.get('feedback', '')}").strip()
