"""Which backend a task gets: a registered name, or `auto`, the rule that picks docker or process on this machine."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import AUTO_BACKEND, Defaults, one_of
from ..errors import UserInputError
from ..registry import SANDBOXES
from .backends import NOT_ROOT, SandboxOptions
from .base import Sandbox

BACKEND_ENV = "EVOLVER_BACKEND"  # overrides `auto` (any registered backend), e.g. for a machine without Docker


def backend_names() -> list[str]:
    """What [sandbox] backend and --backend accept: `auto` and the registered backends."""
    return [AUTO_BACKEND, *SANDBOXES.names()]


def resolve_backend(backend: str) -> tuple[str, str]:
    """(backend, why): what `auto` means on this machine right now."""
    chosen, why, _client = _choose(backend)
    return chosen, why


def _choose(backend: str) -> tuple[str, str, Any]:
    """(backend, why, the docker client when `auto` already connected one): one engine check per sandbox."""
    if backend != AUTO_BACKEND and backend not in SANDBOXES:
        raise UserInputError(f"[sandbox] backend: expected {one_of(tuple(backend_names()))}, found {backend!r} "
                             f"(third-party backends register under the entry point group {SANDBOXES.group})")
    if backend != AUTO_BACKEND:
        return backend, "named in task.toml or on the command line", None
    forced = os.environ.get(BACKEND_ENV, "")
    if forced != AUTO_BACKEND and forced in SANDBOXES:
        return forced, f"{BACKEND_ENV}={forced}", None
    # `auto` is a rule between evolver's own two backends: docker where it can run now, else process.
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


def make_sandbox(backend: str, *, task_root: Path | None = None, isolation: str = Defaults.isolation,
                 recycle_after: int = Defaults.recycle_after, run_label: str = "",
                 progress: Callable[[str], None] = lambda _msg: None) -> Sandbox:
    """`auto` -> docker when an engine answers and the base image is built, else process."""
    chosen, _why, engine = _choose(backend)
    factory = SANDBOXES.get(chosen)
    return factory(SandboxOptions(task_root=task_root, isolation=isolation, recycle_after=recycle_after,
                                  run_label=run_label, progress=progress, engine=engine))


def task_sandbox(task: Any, backend: str | None = None) -> Sandbox:
    """The sandbox a task's [sandbox] table asks for (`backend` overrides it)."""
    cfg = task.sandbox
    return make_sandbox(backend or cfg.backend, task_root=task.root, isolation=cfg.isolation,
                        recycle_after=cfg.recycle_after, run_label=task.name)
