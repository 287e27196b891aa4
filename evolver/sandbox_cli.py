"""`evolver sandbox build|check`: their arguments and what they print (the work is api.sandbox_build and
api.sandbox_check)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .config import AUTO_BACKEND


def add_parser(sub: Any, backends: list[str]) -> None:
    s = sub.add_parser("sandbox", help="build the sandbox image; check the isolation in force")
    verbs = s.add_subparsers(dest="sandbox_command", required=True)
    b = verbs.add_parser("build", help="build the base image offline (debootstrap + docker import)")
    b.add_argument("--rebuild", action="store_true", help="build even when the recipe's image exists")
    b.add_argument("--mirror", help="Debian mirror for debootstrap (default deb.debian.org)")
    b.add_argument("--task", help="also build this task's image (its Dockerfile)")
    b.add_argument("--json", action="store_true")
    c = verbs.add_parser("check", help="run a self-test in a sandbox and print the isolation in force")
    c.add_argument("--backend", choices=backends, default=AUTO_BACKEND)
    c.add_argument("--json", action="store_true")


def dispatch(args: argparse.Namespace) -> int:
    return _build(args) if args.sandbox_command == "build" else _check(args)


def _build(args: argparse.Namespace) -> int:

    from . import api
    from .console import console as make_console

    console = make_console(stderr=True)
    with console.status("checking the sandbox image", spinner="dots") as status:
        record = api.sandbox_build(rebuild=args.rebuild, mirror=args.mirror, task=args.task,
                                   progress=status.update)
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    else:
        what = "built" if record.built else "up to date (recipe unchanged)"
        print(f"{record.image}: {what}, {record.size_mb} MB, {record.seconds} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from . import api

    record = api.sandbox_check(args.backend)
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    else:
        _render_check(record.to_json())
    return 0 if record.status == "ok" else 1


def _render_check(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from .console import console as make_console

    console = make_console()
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
