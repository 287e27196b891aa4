"""Hardened Docker sandbox: a warm pool of containers with an in-container fork-server, or one fresh container
per evaluation (`isolation = "strict"`).

Every container: no network, read-only root, size-capped tmpfs /tmp, the evaluation folder bind-mounted from a
size-capped host tmpfs, all capabilities dropped except the three the trusted harness needs to start the
candidate under an unprivileged uid and kill what it leaves (SETUID, SETGID, KILL; the candidate itself runs
with none), no-new-privileges, pids and memory limits (memory = memory+swap), a CPU quota, an init process,
capped logs, and labels naming the run and the evolver process, which the sweeper uses after a kill -9.
Nothing of the host's environment goes in.
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
    HostMount,
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
TRUSTED_TMPFS_MB = 128  # plus room for each instance's captured output
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


def container_memory_mb(limits: SandboxLimits) -> int:
    # tmpfs pages are charged to the container's memory cgroup, so both tmpfs sizes are part of its budget.
    return (limits.memory_mb + TMP_MB + work_tmpfs_mb(limits) + TRUSTED_TMPFS_MB + 3 * limits.output_limit_mb
            + HARNESS_MEMORY_MB)


@dataclass(frozen=True)
class _Mounts:
    """Two host tmpfs folders per container: one the candidate may fill, one it cannot write at all."""

    trusted: HostMount
    work: HostMount

    @classmethod
    def create(cls, name: str, limits: SandboxLimits) -> _Mounts:
        trusted = HostMount.create(f"{name}-t", TRUSTED_TMPFS_MB + 3 * limits.output_limit_mb)
        try:
            work = HostMount.create(f"{name}-w", work_tmpfs_mb(limits))
        except BaseException:
            trusted.remove()
            raise
        (trusted.path / "ctl").mkdir(mode=0o700)
        (trusted.path / "evals").mkdir(mode=0o755)
        return cls(trusted, work)

    def remove(self) -> None:
        self.trusted.remove()
        self.work.remove()

    def eval_dirs(self, name: str) -> tuple[Path, Path, str, str]:
        """(host trusted dir, host work dir, their paths in the container) of one evaluation."""
        trusted, work = self.trusted.path / "evals" / name, self.work.path / name
        trusted.mkdir()
        work.mkdir()
        return trusted, work, f"{TRUSTED_MOUNT}/evals/{name}", f"{SANDBOX_MOUNT}/{name}"


@dataclass
class _Container:
    container: Any
    mount: _Mounts
    uid: int
    slot: int
    limits: SandboxLimits
    oom: OomCounter
    evaluations: int = 0
    healthy: bool = True

    @property
    def socket_path(self) -> Path:
        return self.mount.trusted.path / "ctl" / "fork.sock"


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
        self._all: set[int] = set()
        self._live: dict[int, _Container] = {}
        self._free_slots = list(range(64))
        self._counter = 0

    # -- description ----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        rooted = os.geteuid() == 0
        return {
            "backend": self.name,
            "image": self.image,
            "isolation": "warm pool, fork-server per evaluation" if self.isolation == "pool"
            else "one fresh container per evaluation",
            "network": "none (network_mode=none)",
            "filesystem": f"read-only root; /tmp tmpfs capped at {TMP_MB} MB; evaluation folder on a host "
                          f"tmpfs {'capped per container' if rooted else '(not capped: not root)'}",
            "candidate_user": "an unprivileged uid of its own, no capabilities; the trusted harness keeps "
                              "SETUID, SETGID and KILL only",
            "limits": "memory = memory+swap, pids, CPU quota, rlimits per child; in-container and host watchdogs",
            "environment": f"only {', '.join(sorted(CHILD_ENV_BASE))}, HOME, TMPDIR",
        }

    # -- containers -----------------------------------------------------------------------------------
    def _labels(self) -> dict[str, str]:
        return {LABEL_SANDBOX: "1", LABEL_RUN: self.run_label, LABEL_PID: str(os.getpid()),
                LABEL_HOST: socket.gethostname()}

    def _create(self, limits: SandboxLimits, command: list[str], mount: _Mounts) -> Any:
        from docker.types import LogConfig, Mount

        memory = f"{container_memory_mb(limits)}m"
        return self.client.containers.create(
            self.image, command=command, user="0:0", working_dir=SANDBOX_MOUNT,
            environment=dict(CHILD_ENV_BASE, HOME="/tmp"), network_mode="none", read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={TMP_MB}m,mode=1777"}, shm_size="16m",
            mounts=[Mount(SANDBOX_MOUNT, str(mount.work.path), type="bind"),
                    Mount(TRUSTED_MOUNT, str(mount.trusted.path), type="bind"),
                    Mount(HARNESS_MOUNT, str(self.harness_dir), type="bind", read_only=True)],
            cap_drop=["ALL"], cap_add=["SETUID", "SETGID", "KILL"], security_opt=["no-new-privileges"],
            pids_limit=limits.max_processes + 32, mem_limit=memory, memswap_limit=memory,
            nano_cpus=max(1, int(limits.cpus * 1e9)), init=True, ipc_mode="private",
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            labels=self._labels(), detach=True)

    def _take_slot(self) -> int:
        with self._lock:
            if not self._free_slots:
                raise RuntimeError("more than 64 concurrent docker sandboxes")
            return self._free_slots.pop()

    def _start_pooled(self, limits: SandboxLimits) -> _Container:
        slot = self._take_slot()
        mount = _Mounts.create(f"{os.getpid()}-{self.run_label}-{slot}", limits)
        try:
            command = [PYTHON, "-I", "-S", "-B", f"{HARNESS_MOUNT}/run_container.py", "serve",
                       f"{TRUSTED_MOUNT}/ctl"]
            container = self._create(limits, command, mount)
            box = _Container(container, mount, slot_uid(slot), slot, limits, OomCounter(None))
            with self._lock:
                self._live[id(box)] = box
            container.start()
            box.oom = OomCounter.of(container)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not box.socket_path.exists():
                if time.monotonic() > deadline:
                    container.reload()
                    logs = container.logs(tail=30).decode("utf-8", "replace")
                    raise RuntimeError(f"the sandbox container did not start its fork-server within "
                                       f"{READY_TIMEOUT_S:g} s (state {container.status}):\n{logs}")
                time.sleep(0.005)
            return box
        except BaseException:
            self._discard_parts(slot, mount, locals().get("container"))
            raise

    def _discard_parts(self, slot: int, mount: _Mounts, container: Any) -> None:
        import docker.errors

        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        mount.remove()
        with self._lock:
            self._free_slots.append(slot)

    def _discard(self, box: _Container) -> None:
        with self._lock:
            self._live.pop(id(box), None)
        self._discard_parts(box.slot, box.mount, box.container)

    def _acquire(self, limits: SandboxLimits) -> _Container:
        with self._lock:
            for i, box in enumerate(self._idle):
                if box.limits == limits:
                    return self._idle.pop(i)
        return self._start_pooled(limits)

    def _release(self, box: _Container) -> None:
        if box.healthy and box.evaluations < self.recycle_after:
            with self._lock:
                if id(box) in self._live:
                    self._idle.append(box)
                    return
        # Removing a container takes a few hundred ms: not on the evaluation's path.
        threading.Thread(target=self._discard, args=(box,), daemon=True, name="evolver-recycle").start()

    def close(self) -> None:
        """Remove every container of this sandbox (idle or busy; busy evaluations end as sandbox errors)."""
        with self._lock:
            boxes = list(self._live.values())
            self._idle.clear()
        for box in boxes:
            self._discard(box)

    # -- evaluations ----------------------------------------------------------------------------------
    def run(self, job: SandboxJob) -> SandboxRun:
        if self.isolation == "strict":
            return self._run_oneshot(job)
        box = self._acquire(job.limits)
        try:
            return self._run_pooled(box, job)
        except BaseException:
            box.healthy = False
            raise
        finally:
            self._release(box)

    def _request(self, job: SandboxJob, mount: _Mounts, name: str, uid: int, nonce: str) -> tuple[dict, Path]:
        """The harness's request for one evaluation, its folders filled; and the host's trusted folder."""
        trusted, work, trusted_c, work_c = mount.eval_dirs(name)
        fill_workdir(trusted, job, uid, uid, writable_root=work)
        request = build_request(
            job, sandbox_root=trusted_c, candidate_dir=f"{work_c}/candidate", task_dir=f"{trusted_c}/task",
            nonce=nonce, child_python=PYTHON, child_uid=uid, child_gid=uid, site_paths=SITE_PATHS,
            scratch_dir=f"{work_c}/scratch")
        request["harness_timeout_s"] = job.harness_timeout_s()
        request["harness_log"] = f"{trusted_c}/harness.log"
        return request, trusted

    def _run_pooled(self, box: _Container, job: SandboxJob) -> SandboxRun:
        started = time.monotonic()
        with self._lock:
            self._counter += 1
            n = self._counter
        nonce = secrets.token_hex(16)
        box.evaluations += 1
        eval_dir = box.mount.trusted.path / "evals" / str(n)
        try:
            request, eval_dir = self._request(job, box.mount, str(n), box.uid, nonce)
            oom_before = box.oom.read()
            text, timed_out, error = self._exchange(box, request, job.harness_timeout_s() + HOST_SLACK_S)
            oom_kills = box.oom.read() - oom_before
            log = _tail(eval_dir / "harness.log", 4000)
        finally:
            shutil.rmtree(eval_dir, ignore_errors=True)
            shutil.rmtree(box.mount.work.path / str(n), ignore_errors=True)
        if timed_out:
            box.healthy = False
            self._kill(box)  # the host watchdog: nothing of this container is trusted to stop by itself
            error = f"the harness exceeded its time limit ({job.harness_timeout_s():g} s); container replaced"
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
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
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
        if box is not None and (error is not None or oom or payload is None
                                or any(r.get("status") in RECYCLE_STATUSES for r in results)):
            box.healthy = False
        memory = oom or any(r.get("status") == "memory" for r in results)
        wall = time.monotonic() - started
        return SandboxRun(
            backend=self.name, exit_code=0 if payload is not None else None, signal=None, timed_out=timed_out,
            memory_exceeded=memory, wall_s=round(wall, 6), cpu_s=0.0, peak_rss_mb=0.0,
            stdout_tail=text[-2000:] if payload is None else "", stderr_tail=log, payload=payload, error=error)

    def _run_oneshot(self, job: SandboxJob) -> SandboxRun:
        """Strict isolation: create, fill, start, wait, remove one container, under `timeout -k` inside."""
        import docker.errors

        started = time.monotonic()
        slot = self._take_slot()
        mount = _Mounts.create(f"{os.getpid()}-{self.run_label}-s{slot}", job.limits)
        container = None
        try:
            uid = slot_uid(slot)
            ctl = mount.trusted.path / "ctl"
            nonce = secrets.token_hex(16)
            request, eval_dir = self._request(job, mount, "0", uid, nonce)
            (ctl / "request.json").write_text(json.dumps(request))
            limit = job.harness_timeout_s()
            command = ["timeout", "-k", "2", f"{limit:g}", PYTHON, "-I", "-S", "-B",
                       f"{HARNESS_MOUNT}/run_container.py", "oneshot", f"{TRUSTED_MOUNT}/ctl"]
            container = self._create(job.limits, command, mount)
            container.start()
            timed_out = False
            try:
                container.wait(timeout=limit + HOST_SLACK_S)
            except Exception:  # noqa: BLE001 - requests' timeout types vary; any wait failure -> watchdog
                timed_out = True
                container.kill()
            container.reload()
            state = container.attrs.get("State", {})
            oom = bool(state.get("OOMKilled"))
            exit_code = state.get("ExitCode")
            result = ctl / "result.json"
            text = result.read_text(encoding="utf-8", errors="replace") if result.exists() else ""
            error = None
            if not text:
                timed_out = timed_out or exit_code in (124, 137)
                error = (f"the harness exceeded its time limit ({limit:g} s) and was killed" if timed_out
                         else f"the harness exited ({exit_code}) without a result document")
            log = _tail(eval_dir / "harness.log", 4000)
            return self._finish(None, job, text, nonce, error, timed_out, oom, log, started)
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)
            mount.remove()
            with self._lock:
                self._free_slots.append(slot)


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
