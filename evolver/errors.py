"""Errors a user can act on. Each says what was expected, what was found, and what to do."""

from __future__ import annotations


class EvolverError(Exception):
    """Base class: an error with a message meant for the user (exit code 1)."""

    exit_code = 1


class UserInputError(EvolverError):
    """Bad input from the user (task file, arguments, references): exit code 2, nothing written."""

    exit_code = 2


class TaskError(UserInputError):
    """A task folder or task.toml with a mistake."""

    def __init__(self, file: str, key: str, expected: str, found: str) -> None:
        self.file, self.key, self.expected, self.found = file, key, expected, found
        super().__init__(f"{file}: {key}: expected {expected}, found {found}")


class SandboxError(EvolverError):
    """The sandbox itself failed (not the candidate): harness crash, protocol mismatch, engine gone."""
