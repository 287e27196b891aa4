"""Rendering of the run verbs (run, resume, status, show, export): tables, the live view, JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from .config import FAILED_STOPS
from .console import console as make_console
from .evidence import sanitize


def _print_json(doc: dict[str, Any]) -> int:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class LiveView:
    """The live terminal view of a run: iteration, budget used, best objectives, frontier, last outcome."""

    def __init__(self, budget: dict[str, Any], enabled: bool) -> None:
        self.budget, self.enabled = budget, enabled
        self.console = make_console(stderr=True)
        self.last = "starting: evaluating the seed on the validation split"
        self.live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            self.live = Live(self._render(None), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _render(self, event) -> Table:
        t = Table(show_header=False, box=None)
        if event is None:
            t.add_row("status", Text(self.last))
            return t
        u = event.usage
        t.add_row("iteration", str(event.iteration))
        b = self.budget
        t.add_row("evaluator calls", f"{u.evals}" + (f" / {b['max_evals']}" if "max_evals" in b else ""))
        t.add_row("USD", f"{u.usd:.4f}" + (f" / {b['max_usd']:g}" if "max_usd" in b else ""))
        t.add_row("time", f"{u.seconds:.0f} s" + (f" / {b['max_seconds']:g} s" if "max_seconds" in b else ""))
        best = ", ".join(f"{k} {_fmt(v)}" for k, v in (event.best or {}).items())
        t.add_row("best (val)", best or "-")
        t.add_row("frontier", str(event.frontier_size))
        t.add_row("last", Text(sanitize(self.last)))
        return t

    def __call__(self, event) -> None:
        self.last = event.message
        if event.kind == "warning":
            self.console.print(Text(f"warning: {event.message}", style="bold yellow"))
        if self.live is not None:
            self.live.update(self._render(event))
        elif event.kind != "warning":
            self.console.print(Text(f"[{event.iteration}] {sanitize(event.message)}"))


def budget_from_args(args: argparse.Namespace):
    from .api import Budget

    return Budget(max_evals=args.budget_evals, max_usd=args.budget_usd,
                  max_seconds=args.budget_minutes * 60 if args.budget_minutes else None,
                  max_iterations=args.max_iterations, target_score=args.target_score, patience=args.patience,
                  stop_file=args.stop_file)


def _print_result(result, as_json: bool) -> None:
    doc = dict(result.__dict__)
    if as_json:
        _print_json(doc)
        return
    console = make_console()
    console.print(Text(f"stopped ({result.stop_kind}): {result.stop_reason}"))
    console.print(Text(f"{result.iterations} iterations, {result.evals} evaluator calls, ${result.usd:.4f}, "
                       f"{result.seconds:.0f} s"))
    best = ", ".join(f"{k} {_fmt(v)}" for k, v in (result.best_objectives or {}).items())
    console.print(Text(f"best: {result.best_branch or result.best} ({best})"))
    console.print(Text(f"frontier ({len(result.frontier)}): {', '.join(result.frontier_branches)}; details: "
                       f"`evolver status {result.run_dir}`"))


def _exit_code(result) -> int:
    """1 when the run stopped on something the user must fix first (config.FAILED_STOPS), said in one line."""
    if result.stop_kind not in FAILED_STOPS:
        return 0
    print(f"evolver: the run stopped: {result.stop_reason}; then continue with `evolver resume {result.run_dir}`",
          file=sys.stderr)
    return 1


def _cmd_run(args: argparse.Namespace) -> int:
    from . import api

    budget = budget_from_args(args)
    with LiveView(budget.to_json(), enabled=sys.stderr.isatty() and not args.json) as view:
        result = api.run(args.task, model=args.model, budget=budget, api_base=args.api_base,
                         temperature=args.temperature, max_tokens=args.max_tokens, repair_turns=args.repair_turns,
                         llm_timeout=args.llm_timeout, llm_cache=args.llm_cache, run_dir=args.run_dir,
                         lessons=args.lessons, minibatch=args.minibatch, seed=args.seed, accept=args.accept,
                         frontier=args.frontier, merge=args.merge, max_merges=args.max_merges, race=args.race,
                         workers=args.workers, proposer=args.proposer, prompts=args.prompts, on_event=view)
    _print_result(result, args.json)
    return _exit_code(result)


def _cmd_resume(args: argparse.Namespace) -> int:
    from . import api

    budget = budget_from_args(args)
    override = budget if budget.to_json() else None  # no budget flags: the run's stored budget
    with LiveView((override or budget).to_json(), enabled=sys.stderr.isatty() and not args.json) as view:
        result = api.resume(args.run_dir, budget=override, workers=args.workers, llm_timeout=args.llm_timeout,
                            on_event=view)
    _print_result(result, args.json)
    return _exit_code(result)


def _cmd_status(args: argparse.Namespace) -> int:
    from .api import status

    doc = status(args.run_dir)
    if args.json:
        return _print_json(doc)
    console = make_console()
    kind = f" ({doc['stop_kind']})" if doc["stop_kind"] else ""
    console.print(Text(f"run {doc['run']} ({doc['task']}): {doc['state']}"
                       + (f", stopped{kind}: {doc['stop_reason']}" if doc["stop_reason"] else "")))
    llm = doc["llm"]
    failed = f", {llm['failed']} failed" if llm["failed"] else ""
    console.print(Text(f"{doc['iterations']} iterations, {doc['evals_used']} evaluator calls, "
                       f"{llm['calls']} LLM calls ({llm['requests']} HTTP requests{failed}, "
                       f"{llm['prompt_tokens']}+{llm['completion_tokens']} tokens, ${doc['usd_used']:.4f}), "
                       f"{doc['elapsed_s']:.0f} s; model {doc['model']}"))
    names = sorted({k for c in doc["candidates"] for k in c["objectives"]}, key=lambda k: k != "score")
    gated = any(c["gate_breaches"] for c in doc["candidates"])  # a column only when some candidate breaks one
    table = Table(title="accepted candidates (validation)", title_justify="left")
    for col in ("candidate", "frontier", "wins", *(("gates broken",) if gated else ()), *names):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for c in doc["candidates"]:
        table.add_row(c["candidate"] + (" (best)" if c["candidate"] == doc["best"] else ""),
                      "yes" if c["on_frontier"] else "", _fmt(c["wins"]),
                      *((str(c["gate_breaches"]),) if gated else ()), *(_fmt(c["objectives"].get(n)) for n in names))
    console.print(table)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(doc["proposals"].items()))
    console.print(Text(f"proposals: {outcomes or 'none yet'}"))
    merges = doc["merges"]
    if merges["attempts"]:
        pairs = "; ".join(f"{m['merge']} = {' + '.join(m['parents'])} ({m['resolution'] or '-'}, {m['outcome']})"
                          for m in merges["pairs"])
        console.print(Text(f"merges: {merges['attempts']} attempted, {merges['accepted']} accepted: {pairs}"))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .api import show

    doc = show(args.run_dir, args.candidate)
    if args.json:
        return _print_json(doc)
    console = make_console()
    where = f"{doc['sha'][:12]} on {doc['branch']}" if doc["sha"] else "(no child)"
    console.print(Text(f"{doc['candidate']} {where} (parent {(doc['parent'] or '-')[:12]}), {doc['kind']}: "
                       f"{doc['status']}" + (f" ({doc['reason']})" if doc["reason"] else "")))
    for label in ("diagnosis", "change", "detail"):
        if doc[label]:
            console.print(Panel(Text(sanitize(doc[label])), title=label, title_align="left", expand=False))
    if doc["child_minibatch_sum"] is not None or doc["parent_minibatch_sum"] is not None:
        console.print(Text(f"minibatch sum: child {_fmt(doc['child_minibatch_sum'])} vs parent "
                           f"{_fmt(doc['parent_minibatch_sum'])}"))
    if doc["merge"]:
        _print_merge(console, doc["merge"])
    if doc["val"]:
        table = Table(title="validation", title_justify="left")
        for col in ("instance", "status", "score"):
            table.add_column(col, overflow="fold")
        for inst, r in doc["val"].items():
            table.add_row(Text(inst), r["status"], _fmt(r["score"]))  # Text: ids like test[a-b] are no markup
        console.print(table)
    if doc.get("gate_breaches"):
        console.print(Panel(Text(sanitize("\n".join(doc["gate_breaches"]))), title="gates broken",
                            title_align="left", expand=False))
    for f in doc.get("failures", [])[:10]:
        title = Text(f"{f['instance']}: {f['status']}")  # an id is no markup
        console.print(Panel(Text(sanitize(f["feedback"] or "(no feedback)")), title=title, title_align="left",
                            expand=False))
    if doc["llm_calls"]:
        _print_llm_calls(console, doc["llm_calls"])
    if doc["diff"]:
        console.print(Syntax(doc["diff"], "diff", theme="ansi_dark"))
    return 0


def _print_llm_calls(console: Console, calls: list[dict[str, Any]]) -> None:
    table = Table(title="LLM calls", title_justify="left")
    for col in ("purpose", "attempts", "tokens", "latency s", "outcome"):
        table.add_column(col, justify="right" if col in ("attempts", "tokens", "latency s") else "left")
    for c in calls:
        tokens = f"{c['prompt_tokens'] or 0}+{c['completion_tokens'] or 0}"
        outcome = "cached" if c["cached"] else (f"{c['error_kind'] or 'failed'}: {c['error']}" if c["error"] else "ok")
        if c["attempt_errors"] and not c["error"]:
            outcome += f" after {len(c['attempt_errors'])} failed attempt(s): {c['attempt_errors'][-1]}"
        table.add_row(c["purpose"], str(c["attempts"]), tokens, f"{c['latency_s']:.1f}", Text(sanitize(outcome)))
    console.print(table)


def _print_merge(console: Console, merge: dict[str, Any]) -> None:
    a, b = merge["parents"]
    sums = merge["parent_subsample_sums"]
    console.print(Text(f"merge of {a} and {b} (base {merge['base']}): {merge['conflicts']} conflict(s), "
                       f"resolution {merge['resolution']}; parents' subsample sums {a} {_fmt(sums.get(a))}, "
                       f"{b} {_fmt(sums.get(b))}"))
    table = Table(title="contributions", title_justify="left")
    for col in ("file", "base lines", "from", "what"):
        table.add_column(col)
    for c in merge["contributions"]:
        lines = "-".join(str(n) for n in c["base_lines"]) if c.get("base_lines") else "-"
        if c["from"] == "conflict":
            what = f"conflict {c['conflict']} resolved by {c.get('resolution', '-')}" + (
                f": {c['why']}" if c.get("why") else "")
            table.add_row(c["path"], lines, "conflict", Text(sanitize(what)))
        else:
            table.add_row(c["path"], lines, c["from"], Text(sanitize(c.get("text", ""))))
    console.print(table)


def _cmd_export(args: argparse.Namespace) -> int:
    from .api import export

    doc = export(args.run_dir, args.candidate, branch=args.branch, patch=args.patch, force=args.force)
    if args.json:
        _print_json(doc)
    else:
        what = f"branch {doc['branch']}; {doc['fetch']}" if "branch" in doc else f"{doc['patch']}; {doc['apply']}"
        make_console().print(Text(f"{doc['candidate']} ({doc['sha'][:12]}) exported: {what}"))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    handlers = {"run": _cmd_run, "resume": _cmd_resume, "status": _cmd_status, "show": _cmd_show,
                "export": _cmd_export}
    return handlers[args.command](args)
