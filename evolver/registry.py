"""Registries of the extension points: proposers, sandbox backends, task kinds.

Each is a name -> factory table filled from two places: evolver's own entries (given as "module:attribute"
strings, imported only when used, so the CLI starts fast) and Python entry points of the registry's group, so a
third-party package adds a proposer, a backend or a task kind by declaring, in its own pyproject.toml:

    [project.entry-points."evolver.proposers"]
    my-proposer = "my_package.module:factory"

An unknown name fails at once (before any LLM call or evaluation) with the names that exist.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import UserInputError

if TYPE_CHECKING:  # the registries name their entries' types without importing the layers that define them
    from .sandbox.backends import BackendFactory
    from .task_kinds import TaskKind

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, what: str, builtins: dict[str, str]) -> None:
        self.group, self.what = group, what
        self._builtins = dict(builtins)  # name -> "module:attribute"
        self._added: dict[str, T] = {}  # registered at run time (tests, embedding applications)

    def register(self, name: str, factory: T) -> None:
        """Add an entry from Python (the entry point group does the same for installed packages)."""
        self._added[name] = factory

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted({*self._builtins, *self._added, *self._entry_points()})

    def __contains__(self, name: object) -> bool:
        """Whether `name` is an entry, without importing it."""
        if not isinstance(name, str):
            return False
        return name in self._builtins or name in self._added or name in self._entry_points()

    def _unknown(self, name: str) -> UserInputError:
        return UserInputError(f"{self.what}: expected one of {', '.join(self.names())}, found {name!r} "
                              f"(third-party {self.what}s register under the entry point group {self.group})")

    def check(self, name: str) -> None:
        """Fail as `get` would for a name that is no entry, without importing any entry."""
        if name not in self:
            raise self._unknown(name)

    def get(self, name: str) -> T:
        if name in self._added:
            return self._added[name]
        if name in self._builtins:
            module, _, attr = self._builtins[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        ep = self._entry_points().get(name)
        if ep is None:
            raise self._unknown(name)
        try:
            return ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in is the user's to fix: say which and why
            raise UserInputError(f"{self.what} {name!r}: its entry point {ep.value} failed to load: "
                                 f"{type(exc).__name__}: {exc}") from None


ProposerFactory = Callable[..., Any]

# A proposer factory takes a `ProposerSettings` (evolver.proposers.base) and returns a Proposer.
PROPOSERS: Registry[ProposerFactory] = Registry("evolver.proposers", "proposer", {
    "reflective": "evolver.proposers.reflective:make_reflective",
    "builtin": "evolver.proposers.builtin:make_builtin",
})

# A backend factory takes a `SandboxOptions` (evolver.sandbox.backends) and returns a Sandbox. `auto` is no entry:
# it is the rule (evolver.sandbox) that picks docker or process on this machine.
SANDBOXES: Registry[BackendFactory] = Registry("evolver.sandboxes", "sandbox backend", {
    "process": "evolver.sandbox.backends:process_backend",
    "docker": "evolver.sandbox.backends:docker_backend",
})

# A task kind is an object satisfying `TaskKind` (evolver.task_kinds), named by [evaluate] kind.
TASK_KINDS: Registry[TaskKind] = Registry("evolver.task_kinds", "task kind", {
    "python": "evolver.task_kinds:PYTHON",
    "pytest": "evolver.task_kinds:PYTEST",
})
