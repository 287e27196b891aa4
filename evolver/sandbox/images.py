"""Sandbox images, built with no container registry.

The base image is a Debian root filesystem made by `debootstrap --variant=minbase` (recipe in
sandboxes/image/) and packed with `docker import`; its tag is a hash of the recipe, so it is rebuilt only when
the recipe changes. A task may add a `Dockerfile` whose first line is `ARG BASE` then `FROM $BASE`
(or `FROM evolver-sandbox:<tag>`): it is built offline on top of the base, tagged with a hash of the base tag
and the task's build context.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .base import CHILD_ENV_BASE, harness_package_dir

REPOSITORY = "evolver-sandbox"
TASK_REPOSITORY = "evolver-task"
# Config lines of `docker import` (the image has no Dockerfile). Part of the tag's hash.
IMPORT_CHANGES = (
    *(f"ENV {k}={v}" for k, v in sorted(CHILD_ENV_BASE.items())),
    "WORKDIR /sandbox",
    'CMD ["python3"]',
)
LABEL = "evolver.sandbox"

Progress = Callable[[str], None]


def recipe_dir() -> Path:
    """sandboxes/image/ of the source tree (beside the harness package)."""
    path = harness_package_dir().parents[1] / "image"
    if not (path / "build-rootfs.sh").is_file():
        raise UserInputError(
            f"the sandbox image recipe is missing (expected {path}/build-rootfs.sh); `evolver sandbox build` "
            "needs evolver installed from a source checkout")
    return path


def base_tag() -> str:
    h = hashlib.sha256()
    root = recipe_dir()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\n".join(IMPORT_CHANGES).encode())
    return f"{REPOSITORY}:{h.hexdigest()[:12]}"


def image_exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _stream(cmd: list[str], progress: Progress, what: str) -> None:
    """Run a build step, showing its latest output line; its whole log in the error when it fails."""
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        progress(f"{what}: {line.strip()[:100]}")
    if proc.wait() != 0:
        tail = "\n".join(lines[-25:])
        raise UserInputError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _ensure_debootstrap(progress: Progress) -> None:
    if shutil.which("debootstrap"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise UserInputError(
            "building the sandbox image needs debootstrap and root (apt-get install debootstrap); or use "
            'backend = "process"')
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    progress("installing debootstrap")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            raise UserInputError("could not install debootstrap with apt-get; install it and retry")


def build_base_image(client: Any, *, rebuild: bool = False, progress: Progress = lambda _msg: None,
                     mirror: str | None = None) -> tuple[str, bool]:
    """(tag, built): the base image for the current recipe, built when missing (or when `rebuild`)."""
    tag = base_tag()
    if not rebuild and image_exists(client, tag):
        return tag, False
    if os.geteuid() != 0:
        raise UserInputError("building the sandbox image runs debootstrap, which needs root; run "
                             "`evolver sandbox build` as root once (the image then serves every user)")
    _ensure_debootstrap(progress)
    recipe = recipe_dir()
    work = Path(tempfile.mkdtemp(prefix="evolver-image-", dir="/var/tmp"))
    try:
        rootfs = work / "rootfs"
        cmd = ["sh", str(recipe / "build-rootfs.sh"), str(rootfs)]
        _stream(cmd + ([mirror] if mirror else []), progress, "debootstrap")
        progress("packing the root filesystem")
        tarball = work / "rootfs.tar"
        _stream(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], progress, "tar")
        progress(f"docker import {tag}")
        repository, _, version = tag.partition(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=version,
                                changes=list(IMPORT_CHANGES))
        # Raises if the import did not produce it. The recipe's newest image also answers to :latest, for
        # task Dockerfiles that name it.
        client.images.get(tag).tag(repository, "latest")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag, True


def task_image(client: Any, task_root: Path, base: str, progress: Progress = lambda _msg: None) -> str:
    """The task's own image when it has a Dockerfile (built offline on top of `base`), else `base`."""
    dockerfile = task_root / "Dockerfile"
    if not dockerfile.is_file():
        return base
    h = hashlib.sha256(base.encode())
    for path in sorted(p for p in task_root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(task_root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    tag = f"{TASK_REPOSITORY}:{h.hexdigest()[:12]}"
    if image_exists(client, tag):
        return tag
    import docker.errors

    progress(f"building the task image {tag} from {dockerfile}")
    try:
        client.images.build(path=str(task_root), tag=tag, buildargs={"BASE": base}, pull=False, rm=True,
                            network_mode="none", labels={LABEL: "task"})
    except docker.errors.BuildError as exc:
        log = "\n".join(str(c.get("stream", c.get("error", ""))).rstrip() for c in exc.build_log)[-3000:]
        raise UserInputError(f"{dockerfile}: the task image did not build: {exc.msg}\n{log}") from exc
    return tag
