"""Sandbox backends as the registry holds them (evolver.registry.SANDBOXES): factories from options to a Sandbox.

A third-party backend is a function `(SandboxOptions) -> Sandbox` named by an entry point of the group
"evolver.sandboxes"; it checks what it needs of the machine itself and raises UserInputError saying what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import Defaults
from ..errors import UserInputError
from .base import Sandbox
from .process import ProcessSandbox

# The docker backend mounts a size-capped tmpfs per container and hands the candidate's folder to a uid of its
# own: both need root on the host (or the containers' root could not reach the folders without privileges).
NOT_ROOT = "the docker backend needs evolver to run as root (it mounts tmpfs folders and sets their owners)"


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class SandboxOptions:
    """What a backend may use to build a sandbox for one task."""

    task_root: Path | None = None  # the task folder (the docker backend builds its Dockerfile, if any)
    isolation: str = Defaults.isolation
    recycle_after: int = Defaults.recycle_after
    run_label: str = ""  # names the run on what the sandbox leaves on the host (container labels)
    progress: Callable[[str], None] = _quiet  # what a slow start (an image build) is doing
    # A connection the `auto` rule already opened while choosing this backend (the docker engine's client):
    # reused, so a sandbox costs one engine check, not two.
    engine: Any = None


class BackendFactory(Protocol):
    def __call__(self, options: SandboxOptions) -> Sandbox: ...


def process_backend(options: SandboxOptions) -> Sandbox:
    return ProcessSandbox()


def docker_backend(options: SandboxOptions) -> Sandbox:
    """Needs root and an engine that answers; builds the base image (and the task's) when missing."""
    from .docker import UNAVAILABLE, DockerSandbox
    from .docker_host import connect
    from .images import build_base_image, task_image

    if os.geteuid() != 0:
        raise UserInputError(f"[sandbox] backend = \"docker\": {NOT_ROOT}; run evolver as root or use the "
                             "process backend")
    client = options.engine or connect()
    if client is None:
        raise UserInputError(f"[sandbox] backend = \"docker\": {UNAVAILABLE}")
    base, _built = build_base_image(client, progress=options.progress)
    image = task_image(client, options.task_root, base, options.progress) if options.task_root else base
    return DockerSandbox(client, image, isolation=options.isolation, recycle_after=options.recycle_after,
                         run_label=options.run_label)
