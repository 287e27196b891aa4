"""One reader of a run's state: `evolver status` shows what the engine decided on, medians over repeats
included, for sandbox-evaluated tasks."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path

import pytest
from conftest import write_task

from evolver.engine.budget import Budget
from evolver.run_state import read_state
from evolver.runs import ModelConfig, start_run
from evolver.store import Store
from evolver.views import status

# A judge whose score varies between repeats: the first repeat is not the median.
NOISY = '''
import random
from evolver_harness import report

def prepare(instance):
    return {"x": int(instance[1:])}

def produce(inputs):
    import sol
    return sol.f(inputs["x"])

def judge(instance, inputs, output, usage):
    return report(instance, random.random(), cpu_s=usage["cpu_s"])
'''


def test_status_shows_the_engines_medians_over_repeats(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task", evaluate_py=NOISY, train=("i1", "i2", "i3"))
    (task / "instances.toml").write_text('train = ["i1", "i2", "i3"]\nval = ["i4", "i5", "i6"]\n')
    toml = (task / "task.toml").read_text().replace("[evaluate]\n", "[evaluate]\nrepeats = 3\n")
    (task / "task.toml").write_text(toml)
    result = start_run(task, ModelConfig(model="builtin"), Budget(max_iterations=2), run_dir=tmp_path / "run")
    doc = status(tmp_path / "run")
    best_row = next(c for c in doc["candidates"] if c["candidate"] == doc["best"])
    assert best_row["objectives"] == result.best_objectives  # what the engine decided with
    state = read_state(tmp_path / "run")
    db_path = tmp_path / "run" / "run.db"
    store = Store(db_path)
    try:
        key, tree = state.eval_key, store.candidate(state.seed).tree
        rows = store.cached(key, tree, ["i4", "i5", "i6"])
    finally:
        store.close()
    assert len(rows) == 9  # three repeats of each validation instance
    medians = [statistics.median(rows[(i, r)].score for r in range(3)) for i in ("i4", "i5", "i6")]
    seed_row = next(c for c in doc["candidates"] if c["candidate"] == "seed")
    assert seed_row["objectives"]["score"] == pytest.approx(statistics.fmean(medians))
    # Make every first repeat the largest value: the median is then another repeat, and status must follow it.
    db = sqlite3.connect(db_path)
    db.execute("UPDATE evaluations SET score = 5.0 WHERE task_digest = ? AND tree = ? AND repeat = 0", (key, tree))
    db.commit()
    db.close()
    medians = [max(rows[(i, 1)].score, rows[(i, 2)].score) for i in ("i4", "i5", "i6")]
    seed_row = next(c for c in status(tmp_path / "run")["candidates"] if c["candidate"] == "seed")
    assert seed_row["objectives"]["score"] == pytest.approx(statistics.fmean(medians)) != 5.0


def test_a_state_reader_never_writes(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task", train=("i1", "i2"))
    (task / "instances.toml").write_text('train = ["i1", "i2"]\nval = ["i3"]\n')
    start_run(task, ModelConfig(model="builtin"), Budget(max_iterations=1), run_dir=tmp_path / "run")
    db = tmp_path / "run" / "run.db"
    before = db.read_bytes()
    status(tmp_path / "run")
    assert db.read_bytes() == before


SINGLE = '''
from evolver_harness import report

def prepare(instance):
    return {"x": 21}

def produce(inputs):
    import sol
    return sol.f(inputs["x"])

def judge(instance, inputs, output, usage):
    return report(instance, 1.0 if output == 42 else 0.0, feedback=f"f(21) gave {output!r}, wanted 42")
'''


def test_a_task_folder_without_instances_is_single_task_search(tmp_path: Path) -> None:
    from evolver.api import evaluate, optimize

    task = write_task(tmp_path / "task", evaluate_py=SINGLE, sol="def f(x):\n    return x\n")
    (task / "instances.toml").unlink()
    report = evaluate(task, run_dir=tmp_path / "eval")
    assert [(r.instance, r.score) for r in report.results] == [("task", 0.0)]
    result = optimize(task, model="builtin", max_iterations=2, run_dir=tmp_path / "run")
    assert result.mode == "single-task" and result.iterations == 2
    assert status(tmp_path / "run")["candidates"][0]["objectives"]["score"] == 0.0
