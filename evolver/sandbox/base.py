"""The Sandbox protocol: a candidate tree and a batch of instances in, one harness result document out.

Backends (process, docker) differ only in how they isolate the harness; the request they hand it and the
document they get back are the same, so results and side information do not depend on the backend.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Defaults

PROTOCOL_VERSION = 1
# Slack on top of the per-instance time limits for the whole harness run (interpreter starts, judging).
HARNESS_SLACK_S = 30.0
CHILD_ENV_BASE = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
}


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = Defaults.timeout_s  # per instance (per test in pytest mode)
    memory_mb: int = Defaults.memory_mb
    cpus: float = Defaults.cpus
    max_processes: int = Defaults.max_processes
    output_limit_mb: int = Defaults.output_limit_mb
    keep_output_bytes: int = 4096  # head and tail of each instance's stdout/stderr kept as side information


@dataclass(frozen=True)
class SandboxJob:
    mode: str  # "python" | "pytest" | "collect"
    archive: bytes  # tar of the candidate tree (git archive)
    task_root: Path
    task_files: tuple[Path, ...]
    instances: tuple[str, ...]
    evaluator: str = "evaluate.py"
    tests: str = "tests"
    profile: bool = False
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    private_files: frozenset[Path] = frozenset()  # of task_files: readable by the trusted harness only

    def harness_timeout_s(self) -> float:
        n = max(1, len(self.instances))
        return self.limits.timeout_s * n + HARNESS_SLACK_S


@dataclass(frozen=True)
class SandboxRun:
    """What a sandbox reports about one harness run (the per-instance results are in `payload`)."""

    backend: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    memory_exceeded: bool
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout_tail: str
    stderr_tail: str
    payload: dict[str, Any] | None
    error: str | None  # set when the harness did not deliver a valid document

    @property
    def ok(self) -> bool:
        return self.error is None and self.payload is not None


class Sandbox(Protocol):
    name: str

    def run(self, job: SandboxJob) -> SandboxRun: ...

    def describe(self) -> dict[str, Any]:
        """The isolation in force, for `evolver sandbox check` and reports."""
        ...

    def close(self) -> None: ...


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(doc: Any) -> Any:
    """The harness document with every lone surrogate replaced by U+FFFD.

    JSON may carry "\\ud800" (a candidate's exception message or output, echoed into feedback), json.loads turns
    it into a str that is not encodable as UTF-8, and storing or printing it would then fail for the whole
    evaluation instead of showing one replaced character.
    """
    if isinstance(doc, str):
        return _SURROGATE.sub("\ufffd", doc)
    if isinstance(doc, list):
        return [valid_text(v) for v in doc]
    if isinstance(doc, dict):
        return {valid_text(k): valid_text(v) for k, v in doc.items()}
    return doc


def parse_document(text: str, nonce: str) -> tuple[dict[str, Any] | None, str | None]:
    """(payload, None) for the harness's result document of this evaluation, else (None, why not)."""
    try:
        doc = valid_text(json.loads(text))
    except ValueError:
        return None, f"the harness's result is not a JSON document: {text[:200]!r}"
    if not isinstance(doc, dict) or doc.get("nonce") != nonce:
        return None, "the harness result did not carry this evaluation's nonce (forged or corrupted)"
    if doc.get("version") != PROTOCOL_VERSION:
        return None, f"harness protocol version {doc.get('version')} (expected {PROTOCOL_VERSION})"
    return doc, None


def harness_package_dir() -> Path:
    """Where the harness package is installed, found without importing it into evolver's process."""
    spec = importlib.util.find_spec("evolver_harness")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the evolver_harness package is not installed; reinstall evolver (scripts/setup)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def build_request(job: SandboxJob, *, sandbox_root: str, candidate_dir: str, task_dir: str, nonce: str,
                  child_python: str, child_uid: int | None, child_gid: int | None,
                  site_paths: list[str], scratch_dir: str) -> dict[str, Any]:
    env = dict(CHILD_ENV_BASE, HOME=scratch_dir, TMPDIR=scratch_dir)
    return {
        "version": PROTOCOL_VERSION,
        "nonce": nonce,
        "mode": job.mode,
        "sandbox_root": sandbox_root,
        "candidate_dir": candidate_dir,
        "task_dir": task_dir,
        "evaluator": job.evaluator,
        "tests_dir": str(Path(task_dir) / job.tests),
        "instances": list(job.instances),
        "timeout_s": job.limits.timeout_s,
        "memory_mb": job.limits.memory_mb,
        "max_processes": job.limits.max_processes,
        "file_size_limit_bytes": job.limits.output_limit_mb * 1024 * 1024,
        "keep_output_bytes": job.limits.keep_output_bytes,
        "profile": job.profile,
        "child_python": child_python,
        "child_uid": child_uid,
        "child_gid": child_gid,
        "child_env": env,
        "site_paths": site_paths,
    }
