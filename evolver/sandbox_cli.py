"""`evolver sandbox build|check`: build the sandbox image offline; run a self-test that reports, from inside a
sandbox, what isolation is actually in force."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .errors import UserInputError

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


def add_parser(sub: Any) -> None:
    s = sub.add_parser("sandbox", help="build the sandbox image; check the isolation in force")
    verbs = s.add_subparsers(dest="sandbox_command", required=True)
    b = verbs.add_parser("build", help="build the base image offline (debootstrap + docker import)")
    b.add_argument("--rebuild", action="store_true", help="build even when the recipe's image exists")
    b.add_argument("--mirror", help="Debian mirror for debootstrap (default deb.debian.org)")
    b.add_argument("--task", help="also build this task's image (its Dockerfile)")
    b.add_argument("--json", action="store_true")
    c = verbs.add_parser("check", help="run a self-test in a sandbox and print the isolation in force")
    c.add_argument("--backend", choices=["auto", "docker", "process"], default="auto")
    c.add_argument("--json", action="store_true")


def dispatch(args: argparse.Namespace) -> int:
    return _build(args) if args.sandbox_command == "build" else _check(args)


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .sandbox.docker import UNAVAILABLE
    from .sandbox.docker_host import connect
    from .sandbox.images import build_base_image, task_image

    client = connect()
    if client is None:
        raise UserInputError(UNAVAILABLE)
    console = Console(stderr=True)
    started = time.monotonic()
    with console.status("checking the sandbox image", spinner="dots") as status:
        def progress(msg: str) -> None:
            status.update(msg)

        tag, built = build_base_image(client, rebuild=args.rebuild, progress=progress, mirror=args.mirror)
        image = tag
        if args.task:
            from .task import load_task

            image = task_image(client, load_task(args.task).root, tag, progress)
    size_mb = client.images.get(image).attrs.get("Size", 0) / 1e6
    doc = {"image": image, "base": tag, "built": built, "size_mb": round(size_mb, 1),
           "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        what = "built" if built else "up to date (recipe unchanged)"
        print(f"{image}: {what}, {doc['size_mb']} MB, {doc['seconds']} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .api import evaluate
    from .sandbox import resolve_backend

    backend, why = resolve_backend(args.backend)
    with tempfile.TemporaryDirectory(prefix="evolver-check-") as tmp:
        root = Path(tmp) / "probe"
        (root / "seed").mkdir(parents=True)
        (root / "seed" / "candidate.py").write_text("VALUE = 1\n")
        (root / "evaluate.py").write_text(textwrap.dedent(PROBE_EVALUATOR))
        (root / "instances.toml").write_text('train = ["probe"]\n')
        (root / "task.toml").write_text(
            f'[task]\nname = "sandbox-check"\n[evaluate]\ntimeout_s = 20\n[sandbox]\nbackend = "{backend}"\n')
        started = time.monotonic()
        report = evaluate(root, run_dir=Path(tmp) / "run", use_cache=False)
        wall = time.monotonic() - started
    result = report.results[0]
    facts: dict[str, Any] = {}
    if result.status == "ok":
        facts = json.loads(result.feedback)
    doc = {"backend": report.backend, "why": why, "status": result.status, "probe": facts,
           "isolation": report.isolation, "seconds": round(wall, 2)}
    if result.status != "ok":
        doc["feedback"] = result.feedback
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _render_check(doc)
    return 0 if result.status == "ok" else 1


def _render_check(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"backend: [bold]{doc['backend']}[/] ({doc['why']}); self-test {doc['status']} in "
                  f"{doc['seconds']} s")
    table = Table("isolation", "in force", show_lines=False)
    for key, value in (doc.get("isolation") or {}).items():
        table.add_row(key, str(value))
    for key, value in doc["probe"].items():
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        table.add_row(f"seen by a candidate: {key}", shown)
    console.print(table)
    if doc.get("feedback"):
        sys.stderr.write(doc["feedback"] + "\n")
