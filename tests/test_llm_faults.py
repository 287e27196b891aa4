"""LLM faults during a run: a hanging endpoint, one that is down, retries and timeouts, each over real HTTP.

The LLM is the scripted OpenAI-compatible server (tests/llm_server.py) that litellm talks to through its normal
code path; the task is a small one in the process sandbox (sol.f(N) must return 2 * N, the seed returns 3 * N),
so what is measured is the LLM's handling, not the evaluations.
"""

# ruff: noqa: F811 - pytest fixtures are imported from the shared server module by name
from __future__ import annotations

import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_task
from engine_kit import make_engine
from llm_server import ScriptedLLMServer, scripted_llm  # noqa: F401

from evolver import api, cli
from evolver.config import Defaults
from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.llm import LLM, LLMCallRecord, LLMConfig, LLMError
from evolver.proposers.base import Proposal

MODEL = "openai/test-model"
MESSAGES = [{"role": "user", "content": "Make f right."}]


def fix(expression: str = "x * 2") -> str:
    """A reply that rewrites sol.py whole: it applies whatever the parent is."""
    return (f"## Diagnosis\nf scales by the wrong factor.\n## Change\nReturn {expression}.\n\n"
            f"```python sol.py\ndef f(x):\n    return {expression}\n```\n")


def small_task(tmp_path: Path) -> Path:
    task = write_task(tmp_path / "task", sol="def f(x):\n    return x * 3\n", train=("i1", "i2", "i3"))
    (task / "instances.toml").write_text('train = ["i1", "i2", "i3"]\nval = ["i4", "i5"]\n')
    return task


def run_args(task: Path, run_dir: Path, api_base: str, *extra: str) -> list[str]:
    return ["run", str(task), "--model", MODEL, "--api-base", api_base, "--run", str(run_dir), "--json", *extra]


def calls_of(run_dir: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(run_dir / "run.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM llm_calls ORDER BY id").fetchall()
    finally:
        db.close()


def free_port() -> int:
    """A port nobody listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llm_for(server_base: str, **overrides) -> tuple[LLM, list[LLMCallRecord]]:
    records: list[LLMCallRecord] = []
    time_left = overrides.pop("time_left", None)
    settings = {"model": MODEL, "api_base": server_base, "timeout_s": 5.0, "max_retries": 2,
                "backoff_base_s": 0.01, "backoff_cap_s": 0.05} | overrides
    return LLM(LLMConfig(**settings), on_call=records.append, time_left=time_left), records


def warm_up(server: ScriptedLLMServer) -> None:
    """One call first, so litellm's import (seconds) is not inside a test's time budget."""
    server.add("warm-up")
    llm_for(server.api_base)[0].complete(MESSAGES)


def deadline_in(seconds: float):
    end = time.monotonic() + seconds
    return lambda: end - time.monotonic()


# -- the LLM alone ------------------------------------------------------------------------------------------
def test_no_time_left_fails_at_once_without_a_request(scripted_llm) -> None:
    scripted_llm.add("never asked for")
    llm, records = llm_for(scripted_llm.api_base, time_left=lambda: 0.0)
    with pytest.raises(LLMError, match="not called: the run's time budget is used up") as info:
        llm.complete(MESSAGES)
    assert info.value.kind == "no_time" and not scripted_llm.requests
    [rec] = records
    assert (rec.attempts, rec.error_kind, rec.error) == (0, "no_time", str(info.value))


def test_the_time_left_cuts_an_attempt_short_and_no_retry_follows(scripted_llm) -> None:
    warm_up(scripted_llm)
    scripted_llm.add({"delay_s": 30, "text": "too late"}, "never asked for")
    llm, records = llm_for(scripted_llm.api_base, timeout_s=60.0, time_left=deadline_in(1.5))
    t0 = time.monotonic()
    with pytest.raises(LLMError, match=f"{MODEL} at {scripted_llm.api_base}: gave up after 1 attempt") as info:
        llm.complete(MESSAGES)
    took = time.monotonic() - t0
    assert took < 6, took  # the attempt's timeout was the 1.5 s left (rounded up to 2), not 60 s
    assert info.value.kind == "timeout" and len(scripted_llm.requests) == 2
    assert records[0].attempts == 1 and records[0].attempt_errors[0].startswith("Timeout")


def test_no_backoff_is_slept_past_the_time_left(scripted_llm) -> None:
    warm_up(scripted_llm)
    scripted_llm.add({"status": 500}, "never asked for")
    llm, records = llm_for(scripted_llm.api_base, backoff_base_s=5.0, backoff_cap_s=5.0, time_left=deadline_in(2.0))
    t0 = time.monotonic()
    with pytest.raises(LLMError, match=r"time budget leaves .* less than the .* wait before a retry") as info:
        llm.complete(MESSAGES)
    assert time.monotonic() - t0 < 1.5 and info.value.kind == "transient"
    assert len(scripted_llm.requests) == 2 and records[0].attempts == 1


def test_every_failed_attempt_is_kept_with_the_call(scripted_llm) -> None:
    scripted_llm.add({"status": 500}, {"status": 429, "retry_after": 0}, "third time")
    llm, records = llm_for(scripted_llm.api_base)
    assert llm.complete(MESSAGES).text == "third time"
    [rec] = records
    assert rec.attempts == 3 == len(scripted_llm.requests) and rec.error is None and rec.error_kind is None
    assert [e.split(":")[0] for e in rec.attempt_errors] == ["InternalServerError", "RateLimitError"]


def test_nothing_listening_is_unreachable_and_names_the_address() -> None:
    api_base = f"http://127.0.0.1:{free_port()}/v1"
    llm, records = llm_for(api_base, max_retries=1)
    with pytest.raises(LLMError) as info:
        llm.complete(MESSAGES)
    message = str(info.value)
    assert info.value.kind == "unreachable" and MODEL in message and api_base in message and "--api-base" in message
    assert records[0].attempts == 2 == len(records[0].attempt_errors) and records[0].error_kind == "unreachable"


# -- runs ---------------------------------------------------------------------------------------------------
def test_a_hanging_endpoint_cannot_hold_a_run_past_its_time_budget(scripted_llm, tmp_path: Path) -> None:
    task, run_dir = small_task(tmp_path), tmp_path / "run"
    scripted_llm.add(*[{"delay_s": 300, "text": fix()} for _ in range(10)])
    budget_s = 5.0
    t0 = time.monotonic()
    code = cli.main(run_args(task, run_dir, scripted_llm.api_base, "--budget-minutes", str(budget_s / 60)))
    took = time.monotonic() - t0
    assert code == 0
    assert took < budget_s + 10, f"the run took {took:.1f} s on a {budget_s:.0f} s budget"
    doc = api.status(run_dir)
    assert doc["stop_kind"] == "budget" and doc["stop_reason"].startswith("time budget")
    assert doc["proposals"] == {"failed:llm_error": 1}
    [call] = calls_of(run_dir)
    assert call["error_kind"] == "timeout" and call["attempts"] == 1 and call["proposal_id"] is not None
    assert doc["llm"]["requests"] == len(scripted_llm.requests) == 1


def test_llm_timeout_flag_times_out_retries_and_is_replaced_by_resume(scripted_llm, tmp_path: Path,
                                                                     capsys) -> None:
    task, run_dir = small_task(tmp_path), tmp_path / "run"
    assert cli.main(run_args(task, run_dir, scripted_llm.api_base, "--max-iterations", "1", "--llm-timeout",
                             "0")) == 2
    assert "--llm-timeout: expected a positive number of seconds" in capsys.readouterr().err
    scripted_llm.add({"delay_s": 4, "text": fix("x + x")}, fix())
    assert cli.main(run_args(task, run_dir, scripted_llm.api_base, "--max-iterations", "1",
                             "--llm-timeout", "1")) == 0
    [call] = calls_of(run_dir)
    assert call["attempts"] == 2 and call["error"] is None and call["latency_s"] < 4
    assert call["attempt_errors"].startswith('["Timeout')
    doc = api.status(run_dir)
    assert doc["proposals"] == {"accepted:accepted": 1} and doc["llm"]["requests"] == 2
    stored = api.status(run_dir)  # the run's settings keep the timeout for `resume`
    assert stored["state"] == "stopped"
    db = sqlite3.connect(run_dir / "run.db")
    assert '"timeout_s": 1.0' in db.execute("SELECT config FROM runs").fetchone()[0]
    scripted_llm.add(fix("2 * x"))
    capsys.readouterr()
    assert cli.main(["resume", str(run_dir), "--max-iterations", "2", "--llm-timeout", "30", "--json"]) == 0
    assert '"timeout_s": 30.0' in db.execute("SELECT config FROM runs").fetchone()[0]
    db.close()


def test_status_counts_every_http_request_and_each_call_knows_its_proposal(scripted_llm, tmp_path: Path,
                                                                          capsys) -> None:
    task, run_dir = small_task(tmp_path), tmp_path / "run"
    # Two workers: each thread links its own calls. Whole-file replies apply to any parent in any order.
    scripted_llm.add({"status": 500}, fix(), {"status": 429, "retry_after": 0}, fix("x + x"), {"status": 503},
                     fix("2 * x"), fix("x * 2 + 0"))
    assert cli.main(run_args(task, run_dir, scripted_llm.api_base, "--max-iterations", "4", "--workers", "2",
                             "--no-merge")) == 0
    capsys.readouterr()
    doc = api.status(run_dir)
    assert doc["llm"]["requests"] == len(scripted_llm.requests) == 7
    assert doc["llm"]["calls"] == 4 and doc["llm"]["failed"] == 0
    assert cli.main(["status", str(run_dir)]) == 0
    assert "4 LLM calls (7 HTTP requests" in capsys.readouterr().out
    calls = calls_of(run_dir)
    db = sqlite3.connect(run_dir / "run.db")
    proposals = [pid for (pid,) in db.execute("SELECT id FROM proposals ORDER BY id")]
    db.close()
    assert Counter(c["proposal_id"] for c in calls) == Counter(proposals) and len(proposals) == 4
    for pid in proposals:
        shown = api.show(run_dir, f"c{pid}")
        [call] = shown["llm_calls"]
        stored = next(c for c in calls if c["proposal_id"] == pid)
        assert call["attempts"] == stored["attempts"] and call["prompt_tokens"] > 0 and call["error"] is None
        assert len(call["attempt_errors"]) == call["attempts"] - 1


def test_an_endpoint_that_is_down_exits_1_after_one_minibatch_and_resume_continues(tmp_path: Path,
                                                                                 capsys) -> None:
    task, run_dir = small_task(tmp_path), tmp_path / "run"
    port = free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    assert cli.main(run_args(task, run_dir, api_base, "--budget-evals", "40")) == 1
    out = capsys.readouterr()
    line = out.err.strip().splitlines()[-1]  # after the progress lines: one line saying what to fix
    assert line.startswith("evolver: ") and MODEL in line and api_base in line and "--api-base" in line
    assert f"evolver resume {run_dir}" in line
    doc = api.status(run_dir)
    assert doc["state"] == "stopped" and doc["stop_kind"] == "llm_failure" and api_base in doc["stop_reason"]
    assert doc["evals_used"] <= Defaults.minibatch + 2  # one minibatch and the seed's validation (2 instances)
    assert doc["proposals"] == {"failed:llm_error": 1}
    [call] = calls_of(run_dir)
    assert call["error_kind"] == "unreachable" and call["attempts"] == Defaults.llm_max_retries + 1
    shown = api.show(run_dir, "c1")  # a proposal without a child: why, and its LLM calls
    assert shown["sha"] is None and shown["reason"] == "llm_error"
    assert shown["llm_calls"][0]["error_kind"] == "unreachable"
    assert cli.main(["show", str(run_dir), "c1"]) == 0
    # The endpoint fixed (a server where the run's stored api_base points): resume goes on from where it stopped.
    with ScriptedLLMServer(bind_port=port) as server:
        server.add(fix())
        assert cli.main(["resume", str(run_dir), "--max-iterations", "2", "--json"]) == 0
        assert len(server.requests) == 1
    doc = api.status(run_dir)
    assert doc["stop_kind"] == "budget" and doc["proposals"] == {"failed:llm_error": 1, "accepted:accepted": 1}


@pytest.mark.parametrize(("status", "said"), [(401, "rejected the API key"), (404, "model not found")])
def test_a_rejected_key_or_unknown_model_stops_the_run_at_the_first_call(scripted_llm, tmp_path: Path, capsys,
                                                                        status: int, said: str) -> None:
    task, run_dir = small_task(tmp_path), tmp_path / "run"
    scripted_llm.add({"status": status}, *[fix() for _ in range(5)])
    assert cli.main(run_args(task, run_dir, scripted_llm.api_base, "--budget-evals", "40")) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert said in line and MODEL in line and scripted_llm.api_base in line
    doc = api.status(run_dir)
    assert doc["stop_kind"] == "llm_failure" and doc["evals_used"] <= Defaults.minibatch + 2
    assert len(scripted_llm.requests) == 1 == doc["llm"]["requests"]  # not retried, and no second proposal


def test_optimize_takes_llm_timeout_and_reports_how_the_run_stopped(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add({"delay_s": 4, "text": "never read"}, "## Diagnosis\nd\n## Change\nc\n\n```text candidate.txt\nBe "
                     "kind.\n```\n")
    result = api.optimize(seed="Be.", evaluator=lambda candidate: float("kind" in candidate), model=MODEL,
                          api_base=scripted_llm.api_base, llm_timeout=1, max_iterations=1, run_dir=tmp_path / "run")
    assert result.stop_kind == "budget" and result.best == "Be kind.\n"
    [call] = calls_of(tmp_path / "run")
    assert call["attempts"] == 2 and call["attempt_errors"].startswith('["Timeout')


# -- the engine ---------------------------------------------------------------------------------------------
def test_llm_failures_in_a_row_stop_the_run_as_an_llm_failure(tmp_path: Path) -> None:
    failing = Proposal(failure="llm_error", detail=f"{MODEL} at http://127.0.0.1:9/v1: gave up after 5 attempts")
    scripted = type("Failing", (), {"name": "failing", "propose": lambda self, ctx, rng: failing})()
    kit = make_engine(tmp_path, scripted, examples={"t1": {"w": 2.0, "b": 0.0}, "v1": {"w": 2.0, "b": 0.0}},
                      val=["v1"], budget=Budget(max_iterations=10), loop=LoopConfig(minibatch=1, merge=False))
    try:
        kit.engine.start(kit.seed)
        reason = kit.engine.run()
        row = kit.store.run("run")
    finally:
        kit.close()
    assert reason.kind == "llm_failure" and "3 times in a row" in reason.message
    assert "http://127.0.0.1:9/v1" in reason.message  # the last failure says where the model was called
    assert row is not None and (row.stop_kind, row.stop_reason) == ("llm_failure", reason.message)
    assert row.iteration == Defaults.llm_error_streak_stop
