"""Command line: argument parsing, rendering, exit codes. The work happens in evolver.api."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
from typing import Any

from .config import ACCEPT_RULES, AUTO_BACKEND, EVAL_SPLITS, FRONTIER_MODES, PRIMARY_OBJECTIVE, Defaults
from .errors import EvolverError
from .registry import PROPOSERS, SANDBOXES

# litellm (used only when an LLM is called) must use the price map it ships, never download one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evolver", description="Reflective evolution of programs.")
    sub = p.add_subparsers(dest="command", required=True)
    # `auto` and every registered backend, third-party ones included: an unknown name exits 2 listing them.
    backends = [AUTO_BACKEND, *SANDBOXES.names()]
    e = sub.add_parser("eval", help="evaluate a candidate of a task in a sandbox and print its side information")
    e.add_argument("task", help="task folder (containing task.toml)")
    e.add_argument("--ref", help="branch or commit of the run repository (default: the task's seed folder)")
    e.add_argument("--repo", help="evaluate --ref of this git repository instead of the run repository")
    e.add_argument("--run", dest="run_dir", help=f"run directory (default: {Defaults.runs_dir}/<task name>)")
    e.add_argument("--split", default=Defaults.eval_split, choices=EVAL_SPLITS)
    e.add_argument("--instances", help="comma-separated instance ids (overrides --split)")
    e.add_argument("--backend", choices=backends, help="override [sandbox] backend")
    e.add_argument("--workers", type=int, help="parallel sandboxes (default: task's, else min(cores, 4))")
    e.add_argument("--no-cache", action="store_true", help="run again even when results are stored")
    e.add_argument("--verbose", "-v", action="store_true", help="also print the feedback of passing instances")
    e.add_argument("--json", action="store_true", help="print one JSON document instead of tables")

    _run_parser(sub)
    rs = sub.add_parser("resume", help="continue a stopped or killed run")
    rs.add_argument("run_dir", help="run directory")
    _budget_args(rs)
    rs.add_argument("--llm-timeout", type=float, metavar="SECONDS",
                    help="seconds each HTTP attempt of an LLM call may take (replaces the run's stored value)")
    rs.add_argument("--workers", type=int, help="iterations in flight at once")
    rs.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="a run's frontier, budget and proposals")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="one candidate: diff vs parent, scores, diagnosis, outcome")
    sh.add_argument("run_dir")
    sh.add_argument("candidate", help="seed, best, c<N>, a branch or a sha")
    sh.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="a candidate as a branch of the run repository or as a patch file")
    ex.add_argument("run_dir")
    ex.add_argument("--candidate", default=Defaults.candidate)
    group = ex.add_mutually_exclusive_group(required=True)
    group.add_argument("--branch")
    group.add_argument("--patch")
    ex.add_argument("--force", action="store_true", help="export a candidate that breaks the task's gates")
    ex.add_argument("--json", action="store_true")

    from . import init_cli, sandbox_cli

    sandbox_cli.add_parser(sub, backends)
    init_cli.add_parser(sub)
    return p


def _run_parser(sub: Any) -> None:
    d = Defaults
    r = sub.add_parser("run", help="evolve a task")
    r.add_argument("task", help="task folder (containing task.toml)")
    r.add_argument("--model", default="", help="litellm model string (e.g. openai/gpt-4.1-mini), or builtin "
                   "for the LLM-free proposer")
    r.add_argument("--api-base", help="OpenAI-compatible server (Ollama, vLLM, ...)")
    # Names are checked against the registry when the run starts (third-party proposers are entry points).
    r.add_argument("--proposer", metavar="NAME",
                   help=f"proposer to use: {', '.join(PROPOSERS.names())} or a third-party one registered under "
                        f"{PROPOSERS.group} (default: chosen by --model)")
    r.add_argument("--prompts", metavar="DIR", help="folder of prompt templates overriding the shipped ones")
    r.add_argument("--temperature", type=float, default=d.temperature)
    r.add_argument("--max-tokens", type=int, default=d.max_tokens)
    r.add_argument("--repair-turns", type=int, default=d.repair_turns, help="tries to fix edits that do not apply")
    r.add_argument("--llm-timeout", type=float, default=d.llm_timeout_s, metavar="SECONDS",
                   help="seconds each HTTP attempt of an LLM call may take (the time budget's remainder cuts it "
                        "shorter)")
    r.add_argument("--llm-cache", help="folder for an opt-in cache of LLM replies keyed by the request")
    r.add_argument("--run", dest="run_dir", help=f"run directory (default: {d.runs_dir}/<task name>)")
    r.add_argument("--lessons", help="lesson log to use (share one across runs of a task)")
    r.add_argument("--minibatch", type=int, help=f"train instances per iteration (default: task's, else {d.minibatch})")
    r.add_argument("--seed", type=int, default=d.seed_rng)
    r.add_argument("--accept", choices=ACCEPT_RULES,
                   help="default: task's [evolve] accept, else pareto when it optimizes several objectives, "
                        "else strict")
    r.add_argument("--no-race", dest="race", action="store_false", default=None,
                   help="validate every accepted child on the whole validation split (default: task's [evolve] race, "
                        "else validate in stages and stop children that cannot matter)")
    r.add_argument("--frontier", choices=FRONTIER_MODES, help=f"default: task's [evolve] frontier, else {d.frontier}")
    r.add_argument("--no-merge", dest="merge", action="store_false", default=None,
                   help="never merge frontier candidates (default: task's [evolve] merge, else merge)")
    r.add_argument("--max-merges", type=int, help=f"merge attempts over the run (default: task's, else {d.max_merges})")
    _budget_args(r)
    r.add_argument("--workers", type=int, help="iterations in flight at once (proposals and their evaluations)")
    r.add_argument("--json", action="store_true", help="print the result as JSON at the end, no live view")


def _budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-evals", type=int, help="evaluator calls (cached results are free)")
    p.add_argument("--budget-usd", type=float, help="LLM spend in USD")
    p.add_argument("--budget-minutes", type=float, help="wall time")
    p.add_argument("--max-iterations", type=int)
    p.add_argument("--target-score", type=float, help="stop when the best validation score reaches it")
    p.add_argument("--patience", type=int, help="stop after N iterations without improvement")
    p.add_argument("--stop-file", help="stop when this file exists")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _render_eval(report, verbose: bool) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from .console import console as make_console
    from .evidence import clip, hot_spot_table, sanitize

    console = make_console()
    names = [n for n in report.objectives if n != PRIMARY_OBJECTIVE]
    title = f"{report.task} @ {report.ref} ({report.sha[:10]}, tree {report.tree[:10]}) - {report.backend} sandbox"
    table = Table(title=title, title_justify="left")
    for col in ("instance", "split", "status", "score", *names, "cpu s", "peak MB", "cached"):
        # An id is folded onto more lines when it must be, never cut.
        table.add_column(col, justify="left" if col in ("instance", "split", "status") else "right",
                         overflow="fold" if col == "instance" else "ellipsis")
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
                            border_style="red" if not r.ok else "dim", expand=False))
    table_text = hot_spot_table(report.results)
    if table_text:
        console.print(Panel(Text(sanitize(table_text)), title="profile hot spots (candidate files)",
                            title_align="left", border_style="dim", expand=False))
    if not report.trusted_scores:
        console.print(Text("note: these scores trust the candidate's process (the task's kind scores inside it, "
                           "as pytest tests import the candidate)", style="yellow"))
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


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops as cleanly as Ctrl-C
    try:
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "sandbox":
            from . import sandbox_cli

            return sandbox_cli.dispatch(args)
        if args.command == "init":
            from . import init_cli

            return init_cli.dispatch(args)
        from . import run_cli

        return run_cli.dispatch(args)
    except EvolverError as exc:
        print(f"evolver: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        hint = f"; continue with `evolver resume {_run_dir(args)}`" if args.command in ("run", "resume") else ""
        print(f"evolver: interrupted; results of finished steps are saved in the run's run.db{hint}",
              file=sys.stderr)
        return 130
    except (OSError, sqlite3.DatabaseError) as exc:
        # What the user's machine refused (a read-only or full disk, permissions, a file that is no database):
        # one line with the path and the OS's (or SQLite's) words. A bug's error (IntegrityError, ...) is
        # not one of these and keeps its traceback.
        if isinstance(exc, sqlite3.DatabaseError) and type(exc) not in (sqlite3.DatabaseError,
                                                                        sqlite3.OperationalError):
            raise
        print(f"evolver: {_os_error_line(exc, args)}", file=sys.stderr)
        return 1


def _os_error_line(exc: OSError | sqlite3.DatabaseError, args: argparse.Namespace) -> str:
    run_dir = _run_dir(args) if args.command in ("eval", "run", "resume", "status", "show", "export") else None
    if isinstance(exc, sqlite3.DatabaseError):
        line = f"{os.path.join(run_dir or '', 'run.db')}: {exc}"  # SQLite's errors name no file
    else:
        where = exc.filename if exc.filename is not None else run_dir
        words = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno is not None else str(exc)
        line = f"{where}: {words}" if where is not None else words
    if args.command in ("run", "resume") and run_dir is not None and os.path.exists(os.path.join(run_dir, "run.db")):
        line += f"; what finished is saved: once fixed, continue with `evolver resume {run_dir}`"
    return line


def _run_dir(args: argparse.Namespace) -> str:
    """The run directory of the command (for the hint to continue a run, and to name its run.db)."""
    if getattr(args, "run_dir", None) is not None:
        return args.run_dir
    from . import api

    try:
        return str(api.default_run_dir(args.task))
    except (EvolverError, OSError):
        return "RUN_DIR"


if __name__ == "__main__":
    sys.exit(main())
