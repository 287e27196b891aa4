"""A run directory nothing corrupts: one writer at a time, the budget kept across kills, every proposal ending
with an outcome and a lesson, and the task's evaluator failing loudly instead of burning the budget."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_task
from engine_kit import Scripted, make_engine, set_constant

from evolver.engine.budget import Budget
from evolver.engine.loop import LoopConfig
from evolver.run_lock import RunLock
from evolver.views import status

EXAMPLES = {"t1": {"w": 2.0, "b": 0.0}, "t2": {"w": 2.0, "b": 1.0}, "v1": {"w": 2.0, "b": 0.0},
            "v2": {"w": 2.0, "b": 1.0}}
HOLD = """
import sys, time
from evolver.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def small_task(root: Path, evaluate_py: str | None = None) -> Path:
    task = write_task(root, train=("i1", "i2", "i3"), **({"evaluate_py": evaluate_py} if evaluate_py else {}))
    (task / "instances.toml").write_text('train = ["i1", "i2", "i3"]\nval = ["i4", "i5"]\n')
    return task


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evolver.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    task = small_task(tmp_path / "task")
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = cli("run", str(task), "--model", "builtin", "--max-iterations", "1", "--run", str(run_dir))
        assert second.returncode == 2, second.stderr
        assert f"in use by evolver pid {holder.pid}" in second.stderr and "Traceback" not in second.stderr
        assert not (run_dir / "run.db").exists()  # nothing written but the lock file
        resumed = cli("resume", str(run_dir))
        assert resumed.returncode == 2
    finally:
        holder.kill()
        holder.wait()
    first = cli("run", str(task), "--model", "builtin", "--max-iterations", "1", "--run", str(run_dir))
    assert first.returncode == 0, first.stderr  # the kernel dropped the dead holder's lock


def test_a_running_state_without_a_live_writer_reads_as_interrupted(tmp_path: Path) -> None:
    kit = make_engine(tmp_path, Scripted([]), examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_iterations=1))
    kit.close()
    db = sqlite3.connect(kit.run_dir / "run.db")
    db.execute("UPDATE runs SET state = 'running'")
    db.commit()
    assert status(kit.run_dir)["state"] == "interrupted"  # its process died (kill -9) while running
    with RunLock(kit.run_dir):
        assert status(kit.run_dir)["state"] == "running"


def test_calls_reserved_by_a_killed_batch_count_as_spent(tmp_path: Path) -> None:
    from evolver.engine.loop import Engine

    kit = make_engine(tmp_path, Scripted([]), examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_evals=10))
    old = kit.engine
    try:
        kit.store.reserve_evals("run", 3)  # what a batch in flight leaves behind when its process is killed
        assert kit.store.run("run").evals_reserved == 3
        # The next process's engine over the same run directory counts them as spent.
        engine = Engine(task=old.task, run="run", repo=old.repo, store=kit.store, evaluator=old.evaluator,
                        proposer=Scripted([]), lessons=old.lessons, budget=Budget(max_evals=10),
                        config=LoopConfig(merge=False))
        assert engine.recovered_evals == 3 and engine.usage.evals == 3
        row = kit.store.run("run")
        assert (row.evals_used, row.evals_reserved) == (3, 0)
    finally:
        kit.close()


def test_a_budget_stop_leaves_nothing_pending_and_resume_without_budget_does_nothing(tmp_path: Path) -> None:
    proposer = Scripted([set_constant("WEIGHT", 1.0 + k / 10) for k in range(1, 30)])
    # 2 (seed val) + 2 (parent minibatch) + 2 (child) + 2 (its validation) = 8 > 7: after the seed, no proposal
    # is made (no LLM call), and the parent's minibatch is not evaluated either (no call spent on nothing).
    kit = make_engine(tmp_path, proposer, examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_evals=7),
                      loop=LoopConfig(minibatch=2, merge=False))
    kit.engine.start(kit.seed)
    reason = kit.engine.run()
    fn = kit.engine.evaluator.fn
    kit.close()
    assert reason.kind == "budget" and "evaluator-call budget" in reason.message
    db = sqlite3.connect(kit.run_dir / "run.db")
    rows = db.execute("SELECT status, reason FROM proposals").fetchall()
    assert rows == [] and db.execute("SELECT evals_used FROM runs").fetchone() == (2,)
    log = kit.run_dir / "lessons.jsonl"
    lessons = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert len(lessons) == len(rows) and {x["reason"] for x in lessons} >= {r for _, r in rows}
    before = (rows, db.execute("SELECT COUNT(*) FROM candidates").fetchone(),
              db.execute("SELECT iteration FROM runs").fetchone(), len(lessons))
    # Resumed with the same budget: it says why it stops and makes nothing new (no LLM call, no commit).
    from evolver.function_eval import FunctionEvaluator
    from evolver.runs import resume_run

    for _ in range(3):  # and again: every resume of a spent run is a no-op
        result = resume_run(kit.run_dir,
                            make_evaluator=lambda t, s: FunctionEvaluator(fn, EXAMPLES, s, t.digest, None))
        assert result.stop_kind == "budget" and "evaluator-call budget" in result.stop_reason
    after = (db.execute("SELECT status, reason FROM proposals").fetchall(),
             db.execute("SELECT COUNT(*) FROM candidates").fetchone(),
             db.execute("SELECT iteration FROM runs").fetchone(),
             len(log.read_text().splitlines()) if log.exists() else 0)
    assert after == before


BROKEN_EVALUATORS = {
    "syntax error": "def prepare(instance:\n    pass\n",
    "no judge": "def produce(inputs):\n    return 1\n",
    "prepare raises": textwrap.dedent('''
        from evolver_harness import report
        def prepare(instance):
            raise KeyError(f"no data for {instance}")
        def produce(inputs):
            return 1
        def judge(instance, inputs, output, usage):
            return report(instance, 1.0)
        '''),
}


@pytest.mark.parametrize("fault", sorted(BROKEN_EVALUATORS))
def test_an_evaluator_that_cannot_score_the_seed_stops_the_run_before_any_proposal(tmp_path: Path,
                                                                                   fault: str) -> None:
    task = small_task(tmp_path / "task", BROKEN_EVALUATORS[fault])
    proc = cli("run", str(task), "--model", "builtin", "--budget-evals", "100", "--run", str(tmp_path / "run"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "the task's evaluator failed" in proc.stderr and "evaluator_error" in proc.stderr
    db = sqlite3.connect(tmp_path / "run" / "run.db")
    assert db.execute("SELECT COUNT(*) FROM proposals").fetchone()[0] == 0
    state, reason = db.execute("SELECT state, stop_reason FROM runs").fetchone()
    assert state == "stopped" and reason.startswith("error: the task's evaluator failed")


def test_an_evaluator_failing_later_stops_the_run_after_that_batch(tmp_path: Path) -> None:
    evaluate = textwrap.dedent('''
        from evolver_harness import report
        def prepare(instance):
            if instance == "i3":
                raise KeyError("i3 is not in the data")
            return {"x": int(instance[1:])}
        def produce(inputs):
            import sol
            return sol.f(inputs["x"])
        def judge(instance, inputs, output, usage):
            return report(instance, 1.0 if output == 2 * inputs["x"] else 0.0)
        ''')
    task = write_task(tmp_path / "task", evaluate_py=evaluate, train=("i3",))
    (task / "instances.toml").write_text('train = ["i3"]\nval = ["i4", "i5"]\n')
    proc = cli("run", str(task), "--model", "builtin", "--budget-evals", "100", "--run", str(tmp_path / "run"))
    assert proc.returncode == 2 and "KeyError: 'i3 is not in the data'" in proc.stderr, proc.stderr
    db = sqlite3.connect(tmp_path / "run" / "run.db")
    assert db.execute("SELECT evals_used FROM runs").fetchone()[0] == 3  # the seed's validation and that batch
    assert db.execute("SELECT COUNT(*) FROM proposals").fetchone()[0] == 0


def test_a_lesson_lost_to_a_kill_is_written_on_resume(tmp_path: Path) -> None:
    kit = make_engine(tmp_path, Scripted([set_constant("WEIGHT", 2.0), set_constant("BIAS", 1.0)]),
                      examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_iterations=2),
                      loop=LoopConfig(minibatch=2, merge=False))
    kit.engine.start(kit.seed)
    kit.engine.run()
    fn = kit.engine.evaluator.fn
    kit.close()
    log = kit.run_dir / "lessons.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # killed after the outcome was stored, before its lesson
    from evolver.function_eval import FunctionEvaluator
    from evolver.runs import resume_run

    resume_run(kit.run_dir, make_evaluator=lambda t, s: FunctionEvaluator(fn, EXAMPLES, s, t.digest, None))
    again = [json.loads(x) for x in log.read_text().splitlines()]
    assert sorted(x["proposal_id"] for x in again) == [1, 2]


class FlakySandbox:
    """The function evaluator behind a sandbox that fails (sandbox_error, never stored) on chosen calls."""

    def __init__(self, inner, fail_calls: set[int]) -> None:
        self.inner, self.fail_calls, self.calls = inner, fail_calls, 0
        self.cache_key = inner.cache_key

    def missing(self, candidate, instances):
        return self.inner.missing(candidate, instances)

    def close(self) -> None:
        self.inner.close()

    def evaluate(self, candidate, instances, **kw):
        from dataclasses import replace

        if not self.inner.missing(candidate, [i for i, _ in instances]):
            return self.inner.evaluate(candidate, instances, **kw)  # served from the store: no sandbox involved
        self.calls += 1
        if self.calls not in self.fail_calls:
            return self.inner.evaluate(candidate, instances, **kw)
        return [replace(r, status="sandbox_error", score=0.0, feedback="The sandbox failed: engine gone", ran=1,
                        cached=False) for r in self.inner.evaluate(candidate, instances, use_cache=False)]


def test_a_sandbox_failure_is_no_verdict_and_repeated_ones_stop_the_run(tmp_path: Path) -> None:
    kit = make_engine(tmp_path, Scripted([set_constant("WEIGHT", 2.0 + k / 10) for k in range(10)]),
                      examples=EXAMPLES, val=["v1", "v2"], budget=Budget(max_iterations=10),
                      loop=LoopConfig(minibatch=2, merge=False))
    # sandbox call 1: the seed's validation; 2: its minibatch; 3, 4, 5: the children's minibatches (all fail)
    kit.engine.evaluator = kit.engine.meter.evaluator = FlakySandbox(kit.engine.evaluator, set(range(3, 50)))
    kit.engine.start(kit.seed)
    reason = kit.engine.run()
    kit.close()
    rows = outcomes_of(kit.run_dir)
    assert rows == [("failed", "sandbox_error")] * 3  # not "worse": the children were never measured
    assert reason.kind == "error" and "the sandbox failed 3 times in a row" in reason.message, reason
    assert status(kit.run_dir)["candidates"][0]["candidate"] == "seed"


def outcomes_of(run_dir: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(run_dir / "run.db")
    return db.execute("SELECT status, reason FROM proposals ORDER BY id").fetchall()
