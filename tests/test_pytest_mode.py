"""pytest mode: each test is an instance, with outcome, assertion, trimmed traceback and captured output."""

from __future__ import annotations

from pathlib import Path

from evolver import api

CANDIDATE = '''
def add(a, b):
    return a + b

def divide(a, b):
    return helper(a, b)

def helper(a, b):
    return a / b
'''
TESTS = '''
import pytest
from mathy import add, divide

def test_add():
    assert add(2, 2) == 4

def test_add_wrong():
    print("debug line from the test")
    assert add(2, 3) == 6, "2+3 should be 6"

def test_divide_by_zero():
    assert divide(1, 0) == 0

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert add(n, 0) == n

def test_skipped():
    pytest.skip("not today")
'''


def _task(root: Path, instances: str | None) -> Path:
    (root / "seed").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "seed" / "mathy.py").write_text(CANDIDATE)
    (root / "tests" / "test_mathy.py").write_text(TESTS)
    extra = ""
    if instances is not None:
        (root / "instances.toml").write_text(instances)
        extra = 'instances = "instances.toml"\n'
    (root / "task.toml").write_text(f'[task]\nmutable = ["mathy.py"]\n[evaluate]\nkind = "pytest"\n{extra}'
                                    'timeout_s = 10\nprofile = true\n')
    return root


def test_collected_tests_become_instances(tmp_path: Path) -> None:
    report = api.evaluate(_task(tmp_path / "t", None), run_dir=tmp_path / "run")
    by = {r.instance: r for r in report.results}
    assert set(by) == {"test_mathy.py::test_add", "test_mathy.py::test_add_wrong",
                       "test_mathy.py::test_divide_by_zero", "test_mathy.py::test_param[1]",
                       "test_mathy.py::test_param[2]", "test_mathy.py::test_skipped"}
    assert by["test_mathy.py::test_add"].status == "ok" and by["test_mathy.py::test_add"].score == 1.0
    wrong = by["test_mathy.py::test_add_wrong"]
    assert wrong.status == "failed" and wrong.score == 0.0
    assert "2+3 should be 6" in wrong.feedback and "debug line from the test" in wrong.feedback
    zero = by["test_mathy.py::test_divide_by_zero"]
    # Trimmed to the test's frame and the candidate's frames, with stable relative labels.
    assert 'candidate/mathy.py", line 9, in helper' in zero.feedback
    assert "task/tests/test_mathy.py" in zero.feedback and "ZeroDivisionError" in zero.feedback
    assert "_pytest" not in zero.feedback and "/tmp" not in zero.feedback
    assert by["test_mathy.py::test_skipped"].status == "skipped"
    assert not report.trusted_scores and not any(r.trusted for r in report.results)
    assert any(row["function"].startswith("mathy.py") for r in report.results for row in r.profile)


def test_listed_tests_and_missing_ones(tmp_path: Path) -> None:
    root = _task(tmp_path / "t", 'train = ["test_mathy.py::test_add"]\n'
                                 'val = ["test_mathy.py::test_param[2]", "test_mathy.py::test_gone"]\n')
    report = api.evaluate(root, run_dir=tmp_path / "run", split="val")
    by = {r.instance: r for r in report.results}
    assert by["test_mathy.py::test_param[2]"].status == "ok"
    assert by["test_mathy.py::test_gone"].status == "missing" and by["test_mathy.py::test_gone"].score == 0.0
