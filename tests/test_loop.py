"""The evolution loop end to end: scripted LLM over real HTTP (litellm's code path), real sandbox, git, SQLite."""

# ruff: noqa: F811 - pytest fixtures are imported from the shared server module by name
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_task
from llm_server import ScriptedLLMServer, scripted_llm  # noqa: F401

from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.repo import RunRepo
from evolver.runs import ModelConfig, resume_run, start_run
from evolver.views import show, status

ROOT = Path(__file__).resolve().parent.parent
JOBSHOP = ROOT / "tasks" / "jobshop"


def edit(search: str, replace: str, path: str = "dispatch.py", diagnosis: str = "SPT starts long jobs late.",
         change: str = "Prefer the job with most work remaining.") -> str:
    return (f"## Diagnosis\n{diagnosis}\n## Change\n{change}\n## Edits\n{path}\n<<<<<<< SEARCH\n{search}\n"
            f"=======\n{replace}\n>>>>>>> REPLACE\n")


MWKR = edit("    return duration", "    return -work_remaining")
SEED_RULE = (JOBSHOP / "seed" / "dispatch.py").read_text()


def whole_file(expression: str) -> str:
    """A reply that rewrites the whole file: it applies whatever the parent is."""
    body = SEED_RULE.replace("    return duration", f"    return {expression}")
    return f"## Diagnosis\nTry a weighted rule.\n## Change\nUse {expression}.\n\n```python dispatch.py\n{body}```\n"
BROKEN = edit("    return durration", "    return -work_remaining")


def run(server: ScriptedLLMServer, tmp_path: Path, budget: Budget, **loop) -> object:
    return start_run(JOBSHOP, ModelConfig(model="openai/test-model", api_base=server.api_base, repair_turns=1),
                     budget, run_dir=tmp_path / "run", loop=LoopConfig(**loop))


def test_improving_edit_moves_the_frontier_and_is_recorded(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add(MWKR)
    result = run(scripted_llm, tmp_path, Budget(max_iterations=1))
    assert result.best_branch == "evolver/run/c1"
    assert result.best_objectives["gap_pct"] < 25  # MWKR on val, from SPT's 28.8
    doc = status(tmp_path / "run")
    assert doc["best"] == "c1" and doc["proposals"] == {"accepted:accepted": 1}
    assert doc["llm"]["calls"] == 1 and doc["llm"]["prompt_tokens"] > 0
    shown = show(tmp_path / "run", "c1")
    assert "-work_remaining" in shown["diff"] and shown["diagnosis"] == "SPT starts long jobs late."
    repo = RunRepo.open_or_init(tmp_path / "run" / "repo")
    info = repo.info(repo.resolve("evolver/run/c1"))
    assert info.kind == "mutation" and info.parents == (repo.resolve("evolver/run/seed"),)
    lessons = (tmp_path / "run" / "lessons.jsonl").read_text().splitlines()
    assert json.loads(lessons[0])["outcome"] == "accepted"
    # The prompt: objective, the file, scores, and the side information fenced as untrusted data.
    prompt = scripted_llm.prompts()[0]
    assert "def priority(" in prompt and "Scores on this minibatch" in prompt
    assert "<<<UNTRUSTED" in prompt and "| " in prompt.split("<<<UNTRUSTED", 1)[1]


def test_malformed_edit_gets_a_repair_turn(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add(BROKEN, MWKR)
    result = run(scripted_llm, tmp_path, Budget(max_iterations=1))
    assert result.best_branch == "evolver/run/c1"
    repair = scripted_llm.prompts()[1]
    assert "could not be applied" in repair and "return durration" in repair


def test_rejections_truncated_noop_not_mutable_and_worse(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add(
        {"text": MWKR[:-30], "finish_reason": "length"},                    # cut off: never applied
        edit("    return duration", "    return duration"),                  # no-op
        edit("x = 1", "x = 2", path="evaluate.py"), edit("x = 1", "x = 2", path="evaluate.py"),  # not mutable
        edit("    return duration", "    return -duration"),                 # LPT: worse than SPT
    )
    run(scripted_llm, tmp_path, Budget(max_iterations=4))
    reasons = [k for k in status(tmp_path / "run")["proposals"]]
    assert sorted(reasons) == ["failed:noop", "failed:not_mutable", "failed:truncated", "rejected:worse"]
    repo = RunRepo.open_or_init(tmp_path / "run" / "repo")
    assert [b for b in repo.branches() if b.startswith("evolver/run/c")] == ["evolver/run/c4"]  # only the LPT child


def test_rate_limit_is_retried_and_accounted(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add({"status": 429, "retry_after": 0}, MWKR)
    run(scripted_llm, tmp_path, Budget(max_iterations=1))
    db = sqlite3.connect(tmp_path / "run" / "run.db")
    assert db.execute("SELECT attempts, error FROM llm_calls").fetchall() == [(2, None)]


def test_eval_budget_is_never_exceeded(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add(*[whole_file(f"duration * {k} - work_remaining") for k in range(2, 30)])
    result = run(scripted_llm, tmp_path, Budget(max_evals=40), minibatch=3)
    assert result.evals <= 40 and "evaluator-call budget" in result.stop_reason
    db = sqlite3.connect(tmp_path / "run" / "run.db")
    assert db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == result.evals


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(tmp_path: Path) -> None:
    # A small task in the process sandbox: what is tested is the kill, not the evaluations.
    task = write_task(tmp_path / "task", sol="def f(x):\n    return x * 3\n", train=("i1", "i2", "i3"))
    (task / "instances.toml").write_text('train = ["i1", "i2", "i3"]\nval = ["i4", "i5"]\n')
    fix = edit("    return x * 3", "    return x * 2", path="sol.py")
    run_dir = tmp_path / "run"
    with ScriptedLLMServer() as server:
        server.add(fix, {"delay_s": 60, "text": fix})
        proc = subprocess.Popen(
            [sys.executable, "-m", "evolver.cli", "run", str(task), "--model", "openai/test-model",
             "--api-base", server.api_base, "--run", str(run_dir), "--max-iterations", "3", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
        deadline = time.monotonic() + 120
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.requests) == 2, proc.stderr.read().decode() if proc.poll() is not None else "no 2nd call"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(run_dir / "run.db")
        assert db.execute("SELECT status FROM proposals ORDER BY id").fetchall() == [("accepted",), ("pending",)]
        # The same server (the run stored its URL) answers the resumed run's next proposal.
        server.add(edit("    return x * 2", "    return x + x", path="sol.py"))
        result = resume_run(run_dir, budget=None)
        assert len(server.requests) == 3
    rows = db.execute("SELECT id, status, reason, child_sha FROM proposals ORDER BY id").fetchall()
    assert [r[1:3] for r in rows[:2]] == [("accepted", "accepted"), ("failed", "interrupted")]
    assert all(r[1] != "pending" for r in rows) and result.iterations == 3
    repo = RunRepo.open_or_init(run_dir / "repo")
    for _, _, _, child in rows:
        if child:
            assert repo.info(child).sha == child  # every recorded child is in git
    assert db.execute("SELECT state FROM runs").fetchone()[0] == "stopped"


def test_status_show_export_from_the_cli_without_litellm(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add(MWKR)
    run(scripted_llm, tmp_path, Budget(max_iterations=1))
    run_dir = str(tmp_path / "run")
    probe = ("import sys, io, contextlib\nfrom evolver.cli import main\nout = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n"
             f"    main(['status', {run_dir!r}, '--json']); main(['show', {run_dir!r}, 'best', '--json'])\n"
             "print('litellm' in sys.modules)\nprint(out.getvalue())")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "False"  # status and show never pay for importing litellm
    patch = tmp_path / "best.patch"
    exported = subprocess.run([sys.executable, "-m", "evolver.cli", "export", run_dir, "--patch", str(patch)],
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    target = tmp_path / "work"
    subprocess.run(["cp", "-r", str(JOBSHOP / "seed"), str(target)], check=True)
    subprocess.run(["git", "apply", str(patch)], cwd=target, check=True)
    assert "return -work_remaining" in (target / "dispatch.py").read_text()
    branch = subprocess.run([sys.executable, "-m", "evolver.cli", "export", run_dir, "--candidate", "c1",
                             "--branch", "mwkr", "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(branch.stdout)["branch"] == "mwkr"
    assert RunRepo.open_or_init(tmp_path / "run" / "repo").resolve("mwkr") == show(run_dir, "c1")["sha"]
    bad = subprocess.run([sys.executable, "-m", "evolver.cli", "show", run_dir, "c99"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "c99" in bad.stderr


def test_rerunning_the_same_command_continues_the_run(tmp_path: Path) -> None:
    first = start_run(JOBSHOP, ModelConfig(model="builtin"), Budget(max_evals=40), run_dir=tmp_path / "run")
    said: list[str] = []
    again = start_run(JOBSHOP, ModelConfig(model="builtin"), Budget(max_evals=80), run_dir=tmp_path / "run",
                      on_event=lambda e: said.append(e.message) if e.kind == "warning" else None)
    assert first.evals <= 40 < again.evals <= 80 and again.iterations > first.iterations
    assert any("holds a run of this task already" in m and "continuing it" in m for m in said)  # not silently
    with pytest.raises(Exception, match="same task and model"):
        start_run(JOBSHOP, ModelConfig(model="openai/x", api_base="http://127.0.0.1:9"), Budget(max_evals=90),
                  run_dir=tmp_path / "run")


def test_rerunning_with_other_loop_flags_says_what_differs(tmp_path: Path, capsys) -> None:
    from evolver import cli

    args = ["run", str(JOBSHOP), "--model", "builtin", "--run", str(tmp_path / "run"), "--json"]
    assert cli.main([*args, "--budget-evals", "20"]) == 0
    assert cli.main([*args, "--budget-evals", "40"]) == 0  # the same command: continues
    capsys.readouterr()
    assert cli.main([*args, "--budget-evals", "60", "--no-merge"]) == 2
    err = capsys.readouterr().err
    assert "merge: run has True, given False" in err and "another --run" in err


def test_a_child_committed_just_before_a_kill_is_adopted_on_resume(tmp_path: Path) -> None:
    import sqlite3

    from evolver.runs import resume_run

    run = tmp_path / "run"
    start_run(JOBSHOP, ModelConfig(model="builtin"), Budget(max_evals=40), run_dir=run)
    db = sqlite3.connect(run / "run.db")
    pid, child = db.execute("SELECT id, child_sha FROM proposals WHERE child_sha IS NOT NULL "
                            "ORDER BY id DESC LIMIT 1").fetchone()
    # The state a kill -9 leaves between committing the child and recording it on its proposal.
    db.execute("UPDATE proposals SET child_sha = NULL, branch = NULL, status = 'pending', reason = 'pending', "
               "detail = '' WHERE id = ?", (pid,))
    db.execute("UPDATE runs SET state = 'running'")
    db.commit()
    db.close()
    resume_run(run, budget=Budget(max_evals=80))
    status_, reason, adopted = sqlite3.connect(run / "run.db").execute(
        "SELECT status, reason, child_sha FROM proposals WHERE id = ?", (pid,)).fetchone()
    assert adopted == child and reason not in ("interrupted", "duplicate"), (status_, reason)


def test_prompt_templates_can_be_overridden_per_run(scripted_llm, tmp_path: Path) -> None:
    from evolver.errors import UserInputError

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "mutation_user.md").write_text("OUR HOUSE TEMPLATE for $task_name\n\n$files\n\n$evidence\n")
    scripted_llm.add(MWKR)
    start_run(JOBSHOP, ModelConfig(model="openai/test-model", api_base=scripted_llm.api_base), Budget(max_iterations=1),
              run_dir=tmp_path / "run", prompts=str(prompts))
    sent = scripted_llm.prompts()[0]
    assert "OUR HOUSE TEMPLATE for jobshop" in sent and "## File dispatch.py" in sent and "UNTRUSTED" in sent
    assert "Lessons from earlier proposals" not in sent  # the shipped template's sections are gone
    # A placeholder the prompt does not have is refused before the run starts, naming the file.
    (prompts / "mutation_user.md").write_text("$task_name $no_such_field\n")
    with pytest.raises(UserInputError, match=r"mutation_user.md: expected only the placeholders .*\$no_such_field"):
        start_run(JOBSHOP, ModelConfig(model="openai/test-model", api_base=scripted_llm.api_base),
                  Budget(max_iterations=1), run_dir=tmp_path / "other", prompts=str(prompts))
    assert not (tmp_path / "other").exists()


def test_a_task_can_ship_its_own_prompt_templates(scripted_llm, tmp_path: Path) -> None:
    import shutil

    task = tmp_path / "jobshop"
    shutil.copytree(JOBSHOP, task, ignore=shutil.ignore_patterns("__pycache__"))
    (task / "prompts").mkdir()
    (task / "prompts" / "mutation_system.md").write_text("You are the task's own reflector.\n")
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("[evolve]\n", '[evolve]\nprompts = "prompts"\n')
                    if "[evolve]" in toml.read_text() else toml.read_text() + '\n[evolve]\nprompts = "prompts"\n')
    scripted_llm.add(MWKR)
    start_run(task, ModelConfig(model="openai/test-model", api_base=scripted_llm.api_base), Budget(max_iterations=1),
              run_dir=tmp_path / "run")
    system = scripted_llm.requests[0]["messages"][0]["content"]
    assert system == "You are the task's own reflector.\n"
