"""Sandboxes: where candidate code runs. `make_sandbox` builds the backend named in task.toml (or picked by `auto`)
from the registry evolver.registry.SANDBOXES; `build_image` and `check` are what `evolver sandbox` does."""

from __future__ import annotations

from .admin import CheckRecord, ImageRecord, build_image, check
from .backends import NOT_ROOT, BackendFactory, SandboxOptions
from .base import Sandbox, SandboxJob, SandboxLimits, SandboxRun
from .choice import BACKEND_ENV, backend_names, make_sandbox, resolve_backend, task_sandbox
from .process import ProcessSandbox

__all__ = ["BACKEND_ENV", "NOT_ROOT", "BackendFactory", "CheckRecord", "ImageRecord", "ProcessSandbox", "Sandbox",
           "SandboxJob", "SandboxLimits", "SandboxOptions", "SandboxRun", "backend_names", "build_image", "check",
           "make_sandbox", "resolve_backend", "task_sandbox"]
