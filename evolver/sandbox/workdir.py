"""The folder one evaluation runs in, the same for every backend: candidate/ (the candidate's tree, owned by
the uid its code runs as), task/ (the task's files, read-only to it) and scratch/ (its HOME and TMPDIR)."""

from __future__ import annotations

import os
import shutil
import tarfile
from io import BytesIO
from pathlib import Path

from .base import SandboxJob


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def fill_workdir(root: Path, job: SandboxJob, uid: int | None, gid: int | None,
                 writable_root: Path | None = None) -> tuple[Path, Path, Path]:
    """Populate `root` (an existing empty folder); returns (candidate, task, scratch). With `writable_root`,
    the two folders the candidate can write to go there instead (a separate filesystem it can fill without
    starving the harness's own files)."""
    root.chmod(0o755)
    writable = writable_root or root
    writable.chmod(0o755)
    candidate, task, scratch = writable / "candidate", root / "task", writable / "scratch"
    candidate.mkdir()
    with tarfile.open(fileobj=BytesIO(job.archive), mode="r:") as tar:
        tar.extractall(candidate, filter="data")
    task.mkdir()
    for src in job.task_files:
        dst = task / src.relative_to(job.task_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    private = {task / src.relative_to(job.task_root) for src in job.private_files}
    for dirpath, _dirnames, filenames in os.walk(task):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            path = os.path.join(dirpath, f)
            # Private files: the harness (their owner) reads them; a candidate running as its own uid cannot.
            os.chmod(path, 0o600 if Path(path) in private else 0o644)
    scratch.mkdir(mode=0o700)
    if uid is not None and gid is not None:
        _chown_tree(candidate, uid, gid)
        os.chown(scratch, uid, gid)
    return candidate, task, scratch
