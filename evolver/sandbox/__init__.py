"""Sandboxes: where candidate code runs. `make_sandbox` picks the backend named in task.toml."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .base import Sandbox, SandboxJob, SandboxLimits, SandboxRun
from .process import ProcessSandbox

__all__ = ["ProcessSandbox", "Sandbox", "SandboxJob", "SandboxLimits", "SandboxRun", "make_sandbox",
           "resolve_backend", "task_sandbox"]

# The docker backend mounts a size-capped tmpfs per container and hands the candidate's folder to a uid of its
# own: both need root on the host (or the containers' root could not reach the folders without privileges).
NOT_ROOT = "the docker backend needs evolver to run as root (it mounts tmpfs folders and sets their owners)"
BACKEND_ENV = "EVOLVER_BACKEND"  # overrides `auto` (process or docker), e.g. for a machine without Docker


def resolve_backend(backend: str) -> tuple[str, str]:
    """(backend, why): what `auto` means on this machine right now."""
    chosen, why, _client = _choose(backend)
    return chosen, why


def _choose(backend: str) -> tuple[str, str, Any]:
    """(backend, why, the docker client when `auto` already connected one): one engine check per sandbox."""
    if backend not in ("auto", "docker", "process"):
        raise UserInputError(f"[sandbox] backend: expected \"auto\", \"docker\" or \"process\", found {backend!r}")
    if backend != "auto":
        return backend, "named in task.toml or on the command line", None
    forced = os.environ.get(BACKEND_ENV, "")
    if forced in ("docker", "process"):
        return forced, f"{BACKEND_ENV}={forced}", None
    if os.geteuid() != 0:
        return "process", NOT_ROOT, None
    from .docker_host import connect
    from .images import base_tag, image_exists

    client = connect()
    if client is None:
        return "process", "no Docker engine answers", None
    try:
        tag = base_tag()
    except UserInputError:
        return "process", "the sandbox image recipe is not installed", None
    if not image_exists(client, tag):
        return "process", f"the sandbox image {tag} is not built (run `evolver sandbox build`)", None
    return "docker", f"a Docker engine answers and {tag} is built", client


def make_sandbox(backend: str, *, task_root: Path | None = None, isolation: str = "pool",
                 recycle_after: int = 50, run_label: str = "",
                 progress: Callable[[str], None] = lambda _msg: None) -> Sandbox:
    """`auto` -> docker when an engine answers and the base image is built, else process."""
    chosen, _why, client = _choose(backend)
    if chosen == "process":
        return ProcessSandbox()
    from .docker import UNAVAILABLE, DockerSandbox
    from .docker_host import connect
    from .images import build_base_image, task_image

    if os.geteuid() != 0:
        raise UserInputError(f"[sandbox] backend = \"docker\": {NOT_ROOT}; run evolver as root or use the "
                             "process backend")
    client = client or connect()
    if client is None:
        raise UserInputError(f"[sandbox] backend = \"docker\": {UNAVAILABLE}")
    base, _built = build_base_image(client, progress=progress)
    image = task_image(client, task_root, base, progress) if task_root is not None else base
    return DockerSandbox(client, image, isolation=isolation, recycle_after=recycle_after, run_label=run_label)


def task_sandbox(task: Any, backend: str | None = None) -> Sandbox:
    """The sandbox a task's [sandbox] table asks for (`backend` overrides it)."""
    cfg = task.sandbox
    return make_sandbox(backend or cfg.backend, task_root=task.root, isolation=cfg.isolation,
                        recycle_after=cfg.recycle_after, run_label=task.name)
