"""Host-side pieces of the docker sandbox: the engine client, size-capped tmpfs mounts for evaluation folders,
the containers' OOM counters, and the sweeper that removes what a killed evolver process left behind."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .process import pid_alive

LABEL_SANDBOX = "evolver.sandbox"
LABEL_RUN = "evolver.run"
LABEL_PID = "evolver.pid"
LABEL_HOST = "evolver.host"
MOUNT_BASE = Path("/run/evolver-sandbox")  # per-container tmpfs mounts (root only)
MOUNT_PREFIX = "evolver-sbx-"
ENGINE_TIMEOUT_S = 60


def engine_socket_present() -> bool:
    """Cheap check before importing the docker SDK: a local engine socket, or DOCKER_HOST set."""
    if os.environ.get("DOCKER_HOST"):
        return True
    return any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock"))


def connect() -> Any | None:
    """A docker client whose engine answers a ping, else None."""
    if not engine_socket_present():
        return None
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT_S)
        client.ping()
    except (docker.errors.DockerException, OSError):
        return None
    return client


@dataclass(frozen=True)
class HostMount:
    """A host folder bind-mounted into one container: its own tmpfs with a size cap when root (a candidate
    filling it cannot fill the host), else a plain folder in /dev/shm."""

    path: Path
    mounted: bool

    @classmethod
    def create(cls, name: str, size_mb: int) -> HostMount:
        """`name` must be unique on this machine (it carries the owner's pid for the sweeper)."""
        if os.geteuid() == 0:
            MOUNT_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = MOUNT_BASE / f"{MOUNT_PREFIX}{name}"
            path.mkdir(mode=0o755)  # never mount over another sandbox's folder
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755,nosuid,nodev",
                                   "evolver-sandbox", str(path)], capture_output=True, text=True)
            if done.returncode == 0:
                return cls(path, True)
            path.rmdir()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        path = Path(tempfile.mkdtemp(prefix=f"{MOUNT_PREFIX}{name}-", dir=base))
        path.chmod(0o755)  # the candidate's uid must traverse it
        return cls(path, False)

    def remove(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()
        else:
            shutil.rmtree(self.path, ignore_errors=True)


class OomCounter:
    """The container cgroup's oom_kill count (cgroup v1 memory.oom_control or v2 memory.events)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def of(cls, container: Any) -> OomCounter:
        container.reload()
        pid = container.attrs.get("State", {}).get("Pid") or 0
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return cls(None)
        for line in lines:
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                return cls(Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / "memory.oom_control")
        for line in lines:
            if line.startswith("0::"):
                return cls(Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.events")
        return cls(None)

    def read(self) -> int:
        if self.path is None:
            return 0
        try:
            for line in self.path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0


def sweep_stale(client: Any) -> int:
    """Remove the sandbox containers and mounts of evolver processes of this host that no longer exist."""
    import docker.errors

    removed = 0
    host = socket.gethostname()
    try:
        containers = client.containers.list(all=True, filters={"label": f"{LABEL_SANDBOX}=1"})
    except docker.errors.APIError:
        containers = []
    for c in containers:
        labels = c.labels or {}
        try:
            pid = int(labels.get(LABEL_PID, "0"))
        except ValueError:
            pid = 0
        if labels.get(LABEL_HOST) == host and pid > 0 and not pid_alive(pid):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
                removed += 1
    for path in _stale_mounts():
        HostMount(path, True).remove()
        removed += 1
    base = Path("/dev/shm")
    for path in base.glob(f"{MOUNT_PREFIX}*") if base.is_dir() else ():
        if not pid_alive(_owner_pid(path.name)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _owner_pid(name: str) -> int:
    try:
        return int(name[len(MOUNT_PREFIX):].split("-")[0])
    except ValueError:
        return os.getpid()  # not ours to judge: treated as alive


def _stale_mounts() -> list[Path]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    stale = []
    for line in lines:
        parts = line.split()
        if len(parts) > 1 and parts[1].startswith(f"{MOUNT_BASE}/{MOUNT_PREFIX}"):
            path = Path(parts[1])
            if not pid_alive(_owner_pid(path.name)):
                stale.append(path)
    return stale


@dataclass(frozen=True)
class ContainerMounts:
    """Two host tmpfs folders per container: `work` (the candidate's folder and scratch: it may fill it) and
    `trusted` (control socket, task files, results, logs: it cannot write there at all), so a candidate that
    fills its disk cannot starve the harness."""

    trusted: HostMount
    work: HostMount

    @classmethod
    def create(cls, owner: str, trusted_mb: int, work_mb: int) -> ContainerMounts:
        name = f"{os.getpid()}-{owner}-{secrets.token_hex(4)}"
        trusted = HostMount.create(f"{name}-t", trusted_mb)
        try:
            work = HostMount.create(f"{name}-w", work_mb)
            (trusted.path / "ctl").mkdir(mode=0o700)
            (trusted.path / "evals").mkdir(mode=0o755)
        except BaseException:
            trusted.remove()
            raise
        return cls(trusted, work)

    @property
    def capped(self) -> bool:
        return self.trusted.mounted and self.work.mounted

    def remove(self) -> None:
        self.trusted.remove()
        self.work.remove()
