"""`evolver init --pytest REPO --target FILE`: its arguments and what it prints (the work is api.init_pytest)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .config import Defaults

SHOWN_IDS = 5


def add_parser(sub: Any) -> None:
    p = sub.add_parser("init", help="write a task for an existing repository (--pytest: its test suite)")
    p.add_argument("--pytest", dest="repo", required=True, metavar="REPO",
                   help="repository folder with a pytest suite")
    p.add_argument("--target", required=True, help="the file to make faster (relative to REPO)")
    p.add_argument("--out", help=f"task folder to write (default: {Defaults.runs_dir}/<name>-task)")
    p.add_argument("--name", help="task name (default: the repository folder's name)")
    p.add_argument("--tests", default=Defaults.tests,
                   help=f"the tests folder, relative to REPO (default: {Defaults.tests})")
    p.add_argument("--bench", default=Defaults.bench_marker,
                   help=f"benchmark tests: ids containing this (default: {Defaults.bench_marker})")
    p.add_argument("--timeout", type=float, default=Defaults.timeout_s,
                   help=f"seconds per test (default: {Defaults.timeout_s:g})")
    p.add_argument("--force", action="store_true", help="replace an existing task folder")
    p.add_argument("--allow-failing", action="store_true",
                   help="write the task even if tests fail on the repository's code (they are left out)")
    p.add_argument("--json", action="store_true")


def dispatch(args: argparse.Namespace) -> int:
    from . import api

    result = api.init_pytest(args.repo, args.target, out=args.out, name=args.name, tests=args.tests,
                             bench=args.bench, timeout_s=args.timeout, force=args.force,
                             allow_failing=args.allow_failing)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"wrote {result.task_dir}: {len(result.tests)} tests ({len(result.benchmarks)} benchmark), "
          f"{result.seed_files} seed files, mutable {result.target}")
    if result.support_files:
        print(f"copied the repository's {', '.join(result.support_files)} into the task's tests/ "
              "(pytest runs there; addopts is not used)")
    for ids, why in ((result.skipped, "skipped"), (result.failing, "failing")):
        if ids:
            shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
            print(f"left out {len(ids)} tests {why} on the repository's code (they measure nothing): {shown}")
    if not result.benchmarks:
        print(f"note: no test id contains {args.bench!r}: the duration of every test is the runtime objective")
    print(f"budget: one validation runs every test once ({len(result.tests)} evaluator calls); --budget-evals "
          f"{result.suggested_budget} or more pays for validating the seed and about 5 accepted children")
    print(f"next: evolver eval {result.task_dir}    then: evolver run {result.task_dir} --model ... "
          f"--budget-evals {result.suggested_budget}")
    return 0
