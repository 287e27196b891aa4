"""Task kinds ([evaluate] kind): what a kind of task asks of its folder and how its instances are run.

A kind is looked up by name in `evolver.registry.TASK_KINDS`; a third-party package adds one with an entry point
of the group "evolver.task_kinds" naming an object that satisfies `TaskKind` (a `KindSpec` will do). Every kind
runs in one of the harness's modes (`config.HARNESS_MODES`): the harness inside the sandbox is stdlib and pytest
only, so a new kind is a new way to lay out and judge a task, not a new protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class TaskKind(Protocol):
    name: str
    harness_mode: str  # one of config.HARNESS_MODES: how the harness runs an instance
    # False when the candidate's own process produces the scores (pytest imports the candidate into the tests'
    # process): results say so, and the CLI warns.
    trusted_scores: bool
    required_files: tuple[str, ...]  # [evaluate] keys that must name an existing file of the task folder
    required_folders: tuple[str, ...]  # [evaluate] keys that must name an existing folder of the task folder
    # True: without [evaluate] instances, the instances are collected from the candidate at evaluation time;
    # False: the instances file (default instances.toml) must exist.
    collects_instances: bool


@dataclass(frozen=True)
class KindSpec:
    """A task kind as plain data: evolver's own kinds, and the easy way to declare one."""

    name: str
    harness_mode: str
    trusted_scores: bool = True
    required_files: tuple[str, ...] = ()
    required_folders: tuple[str, ...] = ()
    collects_instances: bool = False


# prepare/produce/judge in evaluate.py: the judge runs in the trusted harness, outside the candidate's process.
PYTHON = KindSpec("python", harness_mode="python", required_files=("evaluator",))
# Each test of the task's tests folder is an instance.
PYTEST = KindSpec("pytest", harness_mode="pytest", trusted_scores=False, required_folders=("tests",),
                  collects_instances=True)
