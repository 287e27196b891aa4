"""Faults of the task's own evaluator are reported as such, and never cached."""

from __future__ import annotations

from pathlib import Path

from evolver import api

GOOD = """from evolver_harness import report
def prepare(instance):
    if instance == "bad-prepare":
        raise RuntimeError("prepare broke")
    return {}
def produce(inputs):
    import sol
    return sol.f()
def judge(instance, inputs, output, usage):
    if instance == "bad-judge":
        raise ValueError("judge broke")
    if instance == "nan":
        return report(instance, float("nan"))
    return report(instance, 1.0)
"""


def _task(root: Path, evaluate: str, ids: str) -> Path:
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "sol.py").write_text("def f():\n    return 1\n")
    (root / "evaluate.py").write_text(evaluate)
    (root / "instances.toml").write_text(f"train = {ids}\n")
    (root / "task.toml").write_text('[task]\nmutable = ["sol.py"]\n[evaluate]\ntimeout_s = 10\n')
    return root


def test_prepare_and_judge_failures_and_nan(tmp_path: Path) -> None:
    root = _task(tmp_path / "t", GOOD, '["ok", "bad-prepare", "bad-judge", "nan"]')
    report = api.evaluate(root, run_dir=tmp_path / "run")
    by = {r.instance: r for r in report.results}
    assert by["ok"].status == "ok" and by["ok"].score == 1.0
    assert by["bad-prepare"].status == "evaluator_error" and "prepare broke" in by["bad-prepare"].feedback
    assert by["bad-judge"].status == "evaluator_error" and "judge broke" in by["bad-judge"].feedback
    assert "not the candidate's fault" in by["bad-judge"].feedback
    assert by["nan"].status == "invalid" and by["nan"].score == 0.0 and "non-finite" in by["nan"].feedback
    again = {r.instance: r for r in api.evaluate(root, run_dir=tmp_path / "run").results}
    assert again["ok"].cached and again["nan"].cached
    assert not again["bad-judge"].cached and not again["bad-prepare"].cached


def test_evaluator_importing_candidate_at_top_level(tmp_path: Path) -> None:
    # The trusted process never has the candidate on sys.path: a top-level import fails there, loudly.
    root = _task(tmp_path / "t", "import sol\n" + GOOD, '["ok"]')
    r = api.evaluate(root, run_dir=tmp_path / "run").results[0]
    assert r.status == "evaluator_error"
    assert "No module named 'sol'" in r.feedback


def test_evaluator_without_produce(tmp_path: Path) -> None:
    root = _task(tmp_path / "t", "def judge(i, a, b, c):\n    return 1.0\n", '["ok"]')
    r = api.evaluate(root, run_dir=tmp_path / "run").results[0]
    assert r.status == "evaluator_error" and "produce" in r.feedback
