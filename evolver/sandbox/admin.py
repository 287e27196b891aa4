"""What `evolver sandbox build|check` does: build the images offline; run a self-test that reports, from inside a
sandbox, what isolation is actually in force."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import AUTO_BACKEND
from ..errors import UserInputError
from .base import SandboxJob, SandboxLimits, SandboxRun

CHECK_TIMEOUT_S = 20.0
PROBE_INSTANCE = "probe"

# Runs as a candidate would: everything it finds out is what a candidate could do.
PROBE_EVALUATOR = '''
import json, os, socket

def produce(inputs):
    facts = {"uid": os.getuid()}
    with open("/proc/self/status") as f:
        caps = [line.split()[1] for line in f if line.startswith("CapEff")]
    facts["capabilities"] = "none" if caps and int(caps[0], 16) == 0 else "CapEff " + (caps or ["?"])[0]
    def reach(host, port):
        try:
            with socket.create_connection((host, port), timeout=1):
                return "REACHABLE"
        except OSError as exc:
            return "blocked (" + type(exc).__name__ + ")"
    facts["network_outside"] = reach("1.1.1.1", 53)
    facts["network_host_loopback"] = reach("127.0.0.1", 22)
    try:
        open("/evolver-probe", "w").close()
        facts["root_filesystem"] = "WRITABLE"
        os.unlink("/evolver-probe")
    except OSError as exc:
        facts["root_filesystem"] = "not writable (" + type(exc).__name__ + ")"
    facts["environment"] = sorted(os.environ)
    return facts

def judge(instance, inputs, output, usage):
    from evolver_harness import report
    return report(instance, 1.0, feedback=json.dumps(output), cpu_s=usage["cpu_s"])
'''


@dataclass(frozen=True)
class ImageRecord:
    image: str  # the task's image when one was asked for, else the base image
    base: str
    built: bool  # False: the recipe's image existed already
    size_mb: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CheckRecord:
    backend: str
    why: str  # why `auto` (or the name given) chose this backend
    status: str  # the probe's instance status: "ok" when the self-test ran
    probe: dict[str, Any]  # what a candidate sees: uid, capabilities, network, root filesystem, environment
    isolation: dict[str, Any] = field(default_factory=dict)  # what the backend says is in force
    seconds: float = 0.0
    feedback: str | None = None  # why the self-test failed

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "feedback"}
        return doc if self.feedback is None else {**doc, "feedback": self.feedback}


def build_image(*, rebuild: bool = False, mirror: str | None = None, task_root: Path | None = None,
                progress: Callable[[str], None] = lambda _msg: None) -> ImageRecord:
    """The base image for the current recipe (built offline when missing, or when `rebuild`), and the task's
    own image on top when `task_root` holds a Dockerfile."""
    from .docker import UNAVAILABLE
    from .docker_host import connect
    from .images import build_base_image, task_image

    client = connect()
    if client is None:
        raise UserInputError(UNAVAILABLE)
    started = time.monotonic()
    tag, built = build_base_image(client, rebuild=rebuild, progress=progress, mirror=mirror)
    image = task_image(client, task_root, tag, progress) if task_root is not None else tag
    size_mb = client.images.get(image).attrs.get("Size", 0) / 1e6
    return ImageRecord(image=image, base=tag, built=built, size_mb=round(size_mb, 1),
                       seconds=round(time.monotonic() - started, 1))


def _archive(files: dict[str, str]) -> bytes:
    """A tar of the candidate's files, as `git archive` hands a candidate to a sandbox."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _outcome(run: SandboxRun) -> tuple[str, str]:
    """(status, feedback) of the probe instance, as an evaluation would record them."""
    if not run.ok or run.payload is None:
        return "sandbox_error", f"{run.error or 'the sandbox failed'}\n{run.stderr_tail[-1500:]}".strip()
    if run.payload.get("error"):
        return "evaluator_error", str(run.payload["error"])
    rec = next((r for r in run.payload.get("results", []) if r.get("instance") == PROBE_INSTANCE), None)
    if rec is None:
        return "sandbox_error", "the harness reported no result for the probe"
    return str(rec.get("status", "error")), str(rec.get("feedback", ""))


def check(backend: str = AUTO_BACKEND) -> CheckRecord:
    """Run the probe in a sandbox of `backend` (after `auto`'s choice) and report what isolation is in force."""
    from .choice import make_sandbox, resolve_backend

    chosen, why = resolve_backend(backend)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evolver-check-") as tmp:
        task_root = Path(tmp)
        evaluator = task_root / "evaluate.py"
        evaluator.write_text(textwrap.dedent(PROBE_EVALUATOR))
        job = SandboxJob(mode="python", archive=_archive({"candidate.py": "VALUE = 1\n"}), task_root=task_root,
                         task_files=(evaluator,), instances=(PROBE_INSTANCE,), evaluator=evaluator.name,
                         limits=SandboxLimits(timeout_s=CHECK_TIMEOUT_S))
        sandbox = make_sandbox(chosen, run_label="sandbox-check")
        try:
            status, feedback = _outcome(sandbox.run(job))
            isolation = sandbox.describe()
        finally:
            sandbox.close()
    probe = json.loads(feedback) if status == "ok" else {}
    return CheckRecord(backend=sandbox.name, why=why, status=status, probe=probe, isolation=isolation,
                       seconds=round(time.monotonic() - started, 2), feedback=None if status == "ok" else feedback)
