"""Command line: argument parsing, rendering, exit codes. The work happens in evolver.api."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .errors import EvolverError

# litellm (used only when an LLM is called) must use the price map it ships, never download one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evolver", description="Reflective evolution of programs.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="evaluate a candidate of a task in a sandbox and print its side information")
    e.add_argument("task", help="task folder (containing task.toml)")
    e.add_argument("--ref", help="branch or commit of the run repository (default: the task's seed folder)")
    e.add_argument("--repo", help="evaluate --ref of this git repository instead of the run repository")
    e.add_argument("--run", dest="run_dir", help="run directory (default: runs/<task name>)")
    e.add_argument("--split", default="all", choices=["train", "val", "test", "all"])
    e.add_argument("--instances", help="comma-separated instance ids (overrides --split)")
    e.add_argument("--backend", choices=["auto", "docker", "process"], help="override [sandbox] backend")
    e.add_argument("--workers", type=int, help="parallel sandboxes (default: task's, else min(cores, 4))")
    e.add_argument("--no-cache", action="store_true", help="run again even when results are stored")
    e.add_argument("--verbose", "-v", action="store_true", help="also print the feedback of passing instances")
    e.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _render_eval(report, verbose: bool) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from .evidence import clip, hot_spot_table, sanitize

    console = Console()
    names = [n for n in report.objectives if n != "score"]
    title = f"{report.task} @ {report.ref} ({report.sha[:10]}, tree {report.tree[:10]}) - {report.backend} sandbox"
    table = Table(title=title, title_justify="left")
    for col in ("instance", "split", "status", "score", *names, "cpu s", "peak MB", "cached"):
        table.add_column(col, justify="left" if col in ("instance", "split", "status") else "right")
    for r in report.results:
        style = None if r.ok else "red"
        usage = r.usage or {}
        table.add_row(
            Text(sanitize(r.instance)), r.split or "-", Text(r.status, style=style), _fmt(r.score),
            *(_fmt(r.objectives.get(n)) for n in names), _fmt(usage.get("cpu_s")), _fmt(usage.get("peak_rss_mb")),
            "yes" if r.cached else "")
    console.print(table)
    for split, s in report.summary().items():
        means = ", ".join(f"{k} {_fmt(v)}" for k, v in s["mean_objectives_ok"].items())
        console.print(Text(f"{split}: {s['instances']} instances, {s['failed']} failed, mean score "
                           f"{s['mean_score']:.4g}" + (f"; mean over ok: {means}" if means else "")))
    for r in report.results:
        if r.ok and (not verbose or not r.feedback.strip()):
            continue
        body = clip(r.feedback.strip() or "(no feedback)", 3000)
        if not r.ok and r.stderr.strip():
            body += "\n--- stderr (tail) ---\n" + clip(r.stderr.strip(), 1200)
        console.print(Panel(Text(sanitize(body)), title=Text(f"{r.instance}: {r.status}"), title_align="left",
                            border_style="red" if not r.ok else "dim"))
    table_text = hot_spot_table(report.results)
    if table_text:
        console.print(Panel(Text(sanitize(table_text)), title="profile hot spots (candidate files)",
                            title_align="left", border_style="dim"))
    if not report.trusted_scores:
        console.print(Text("note: pytest mode - these scores trust the candidate's process "
                           "(tests import the candidate)", style="yellow"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))


def _cmd_eval(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import api

    instances = [i.strip() for i in args.instances.split(",") if i.strip()] if args.instances else None
    show_progress = sys.stderr.isatty()
    with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not show_progress) as progress:
        bar = progress.add_task("eval", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        report = api.evaluate(args.task, args.ref, split=args.split, instances=instances, run_dir=args.run_dir,
                              repo_path=args.repo, use_cache=not args.no_cache, backend=args.backend,
                              workers=args.workers, on_progress=on_progress)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _render_eval(report, args.verbose)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "eval":
            return _cmd_eval(args)
    except EvolverError as exc:
        print(f"evolver: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("evolver: interrupted; results of finished batches are saved in the run's run.db",
              file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
