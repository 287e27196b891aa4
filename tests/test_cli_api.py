"""The command line is parsing and rendering over evolver.api: what it passes down, what it imports, its defaults
and exit codes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_task

from evolver import api, cli, config
from evolver.config import Defaults
from evolver.errors import UserInputError
from evolver.runs import RunResult

ROOT = Path(__file__).resolve().parent.parent
JOBSHOP = ROOT / "tasks" / "jobshop"
CLI_MODULES = ("cli.py", "run_cli.py", "sandbox_cli.py", "init_cli.py", "console.py")
# What the CLI modules may import of evolver: the api, the config tree, errors, each other, the console they print
# through, and the sanitizing of untrusted text for the terminal.
CLI_MAY_IMPORT = {"api", "config", "errors", "registry", "evidence", "cli", "run_cli", "sandbox_cli", "init_cli",
                  "console"}


def _probe(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1]


def test_status_help_and_eval_do_not_import_litellm(tmp_path: Path) -> None:
    help_probe = ("import sys, contextlib, io\nfrom evolver.cli import main\n"
                  "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                  "    main(['status', '--help'])\nprint('litellm' in sys.modules)")
    assert _probe(help_probe) == "False"
    task = write_task(tmp_path / "task", train=("i1", "i2"))
    eval_probe = ("import sys, contextlib, io, json\nfrom evolver.cli import main\nout = io.StringIO()\n"
                  "with contextlib.redirect_stdout(out):\n"
                  f"    code = main(['eval', {str(task)!r}, '--run', {str(tmp_path / 'run')!r}, '--json'])\n"
                  "assert code == 0 and json.loads(out.getvalue())['summary']\n"
                  "print('litellm' in sys.modules)")
    assert _probe(eval_probe) == "False"


def test_cli_modules_import_only_the_api_layer() -> None:
    for name in CLI_MODULES:
        tree = ast.parse((ROOT / "evolver" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                modules = [node.module] if node.module else [a.name for a in node.names]
                for module in modules:
                    assert module.split(".")[0] in CLI_MAY_IMPORT, f"{name} imports .{module}"


def _fake_result(run_dir: str) -> RunResult:
    return RunResult(run_dir=run_dir, stop_reason="iteration budget: 1 of 1", stop_kind="budget", best=None,
                     best_branch=None, best_objectives=None, frontier=(), frontier_branches=(), iterations=1,
                     evals=3, usd=0.0, seconds=0.1)


@pytest.fixture
def start_run_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """runs.start_run replaced by a recorder: what the CLI, through api.run, asks the engine for."""
    calls: list[dict[str, Any]] = []

    def fake(task_path, model, budget, **kwargs):
        calls.append({"task": task_path, "model": model, "budget": budget, **kwargs})
        return _fake_result(str(kwargs.get("run_dir")))

    monkeypatch.setattr("evolver.runs.start_run", fake)
    return calls


def test_run_passes_proposer_and_prompts_only_when_given(start_run_calls, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    base = ["run", str(JOBSHOP), "--model", "builtin", "--max-iterations", "1", "--run", str(tmp_path / "r")]
    assert cli.main([*base, "--proposer", "builtin", "--prompts", str(prompts), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 1
    assert cli.main([*base, "--accept", "ties"]) == 0
    given, plain = start_run_calls
    assert given["proposer"] == "builtin" and given["prompts"] == str(prompts)
    assert "proposer" not in plain and "prompts" not in plain
    assert plain["loop"].accept == "ties" and given["loop"].accept == "strict"  # jobshop optimizes the score alone
    assert plain["model"].temperature == Defaults.temperature and plain["budget"].max_iterations == 1


@pytest.mark.parametrize(("args", "said"), [(["--proposer", "nope"], "builtin, reflective"),
                                            (["--prompts", "/no/such/folder"], "--prompts")])
def test_run_rejects_bad_names_before_starting(start_run_calls, args: list[str], said: str, capsys) -> None:
    assert cli.main(["run", str(JOBSHOP), "--model", "builtin", "--max-iterations", "1", *args]) == 2
    assert said in capsys.readouterr().err and not start_run_calls


@pytest.mark.parametrize("args", [["--accept", "maybe"], ["--frontier", "islands"], ["--split", "dev"]])
def test_flag_choices_are_the_configs_values(args: list[str], capsys) -> None:
    verb = ["eval", "TASK"] if args[0] == "--split" else ["run", "TASK"]
    with pytest.raises(SystemExit) as exc:
        cli.main([*verb, *args])
    allowed = {"--accept": config.ACCEPT_RULES, "--frontier": config.FRONTIER_MODES,
               "--split": config.EVAL_SPLITS}[args[0]]
    err = capsys.readouterr().err
    assert exc.value.code == 2 and all(repr(v) in err for v in allowed)


def test_api_validates_what_the_cli_restricts(start_run_calls) -> None:
    with pytest.raises(UserInputError, match=r'--frontier: expected "instance", "objective" or "hybrid"'):
        api.run(JOBSHOP, model="builtin", frontier="islands")
    assert not start_run_calls


def test_defaults_come_from_config() -> None:
    run = cli._parser().parse_args(["run", "TASK"])
    assert (run.temperature, run.max_tokens, run.repair_turns, run.seed, run.llm_timeout) == (
        Defaults.temperature, Defaults.max_tokens, Defaults.repair_turns, Defaults.seed_rng, Defaults.llm_timeout_s)
    assert cli._parser().parse_args(["resume", "RUN"]).llm_timeout is None  # resume keeps the run's own
    ev = cli._parser().parse_args(["eval", "TASK"])
    assert ev.split == Defaults.eval_split and ev.backend is None
    assert cli._parser().parse_args(["export", "RUN", "--patch", "p"]).candidate == Defaults.candidate
    init = cli._parser().parse_args(["init", "--pytest", "R", "--target", "t.py"])
    assert (init.tests, init.bench, init.timeout) == (Defaults.tests, Defaults.bench_marker, Defaults.timeout_s)
    from evolver.llm import LLMConfig
    from evolver.task import EvolveConfig, SandboxConfig

    llm = LLMConfig(model="m")
    assert (llm.temperature, llm.max_tokens, llm.max_retries) == (
        Defaults.temperature, Defaults.max_tokens, Defaults.llm_max_retries)
    assert SandboxConfig().backend == config.AUTO_BACKEND and EvolveConfig().frontier == Defaults.frontier


def test_sandbox_check_through_the_api(capsys) -> None:
    record = api.sandbox_check("process")
    assert record.status == "ok" and record.backend == "process" and "uid" in record.probe
    assert cli.main(["sandbox", "check", "--backend", "process", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "ok" and doc["isolation"]["backend"] == "process" and "feedback" not in doc
