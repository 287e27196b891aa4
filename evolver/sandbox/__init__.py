"""Sandboxes: where candidate code runs. `make_sandbox` picks the backend named in task.toml."""

from __future__ import annotations

from ..errors import UserInputError
from .base import Sandbox, SandboxJob, SandboxLimits, SandboxRun
from .process import ProcessSandbox

__all__ = ["ProcessSandbox", "Sandbox", "SandboxJob", "SandboxLimits", "SandboxRun", "make_sandbox"]


def make_sandbox(backend: str) -> Sandbox:
    """`auto` -> docker when an engine answers and the docker backend is available, else process."""
    if backend in ("auto", "process"):
        return ProcessSandbox()
    if backend == "docker":
        raise UserInputError(
            "[sandbox] backend: expected \"auto\" or \"process\", found \"docker\": the docker backend is not "
            "available in this version of evolver; use backend = \"auto\" (falls back to the process sandbox)")
    raise UserInputError(f"[sandbox] backend: expected \"auto\", \"docker\" or \"process\", found {backend!r}")
