"""The ENAMEL task (tasks/enamel): data, splits, the value encoding, and real evaluations in the process sandbox.

The sandbox tests copy the task's files into a temporary task whose seed holds a few hand-written candidates,
and evaluate them for real: correctness against ENAMEL's reference, the efficiency measured by the trusted
server over the session channel, and the time limit.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from evolver.api import evaluate
from evolver.evaluation import InstanceResult
from evolver.task import load_task

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "enamel"
TASK_FILES = ("task.toml", "evaluate.py", "efficiency.py", "enamel_inputs.py", "typed_json.py")

# sum_product, wrong only on the empty list (the product of nothing is 1).
WRONG_SUM_PRODUCT = '''
def sum_product(numbers):
    s, p = 0, 1
    for number in numbers:
        s += number
        p *= number
    return s, (p if numbers else 0)
'''
# make_palindrome in linear time (ENAMEL's expert reference: KMP failure function of reverse + sep + string).
FAST_MAKE_PALINDROME = '''
def make_palindrome(string: str) -> str:
    if not string:
        return string
    reversed_s = string[::-1]
    pattern = reversed_s + "\\x00" + string
    fail = [0] * (len(pattern) + 1)
    j = 0
    for i in range(1, len(pattern)):
        c = pattern[i]
        while j > 0 and pattern[j] != c:
            j = fail[j]
        if j > 0 or pattern[0] == c:
            j += 1
        fail[i + 1] = j
    return string[: len(string) - fail[-1]] + reversed_s
'''
# has_close_elements comparing every pair: quadratic where the reference sorts. It also stops the clocks of its
# own process, which must change nothing: the time is measured outside it.
QUADRATIC_CLOSE_ELEMENTS = '''
import time
time.perf_counter = time.thread_time = time.process_time = time.monotonic = lambda: 0.0

def has_close_elements(numbers, threshold):
    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if abs(a - b) < threshold:
                return True
    return False
'''


def _task(root: Path, seed_files: dict[str, str], instances: list[str]) -> Path:
    """A copy of the ENAMEL task with the given candidate files as its seed, on the process sandbox."""
    root.mkdir(parents=True)
    for name in TASK_FILES:
        shutil.copy(TASK / name, root / name)
    shutil.copytree(TASK / "data", root / "data")
    toml = (root / "task.toml").read_text(encoding="utf-8").replace('backend = "auto"', 'backend = "process"')
    (root / "task.toml").write_text(toml, encoding="utf-8")
    (root / "instances.toml").write_text(f"train = {json.dumps(instances)}\n", encoding="utf-8")
    (root / "seed").mkdir()
    for name, text in seed_files.items():
        (root / "seed" / name).write_text(text, encoding="utf-8")
    return root


def _run(task: Path, run_dir: Path) -> dict[str, InstanceResult]:
    report = evaluate(task, run_dir=run_dir, use_cache=False, backend="process", workers=1)
    assert report.trusted_scores
    return {r.instance: r for r in report.results}


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, InstanceResult]:
    """One evaluation of three hand-written candidates (one sandbox batch)."""
    tmp = tmp_path_factory.mktemp("enamel")
    task = _task(tmp / "task", {
        "he008_sum_product.py": WRONG_SUM_PRODUCT,
        "he010_make_palindrome.py": FAST_MAKE_PALINDROME,
        "he000_has_close_elements.py": QUADRATIC_CLOSE_ELEMENTS,
    }, ["HumanEval/8", "HumanEval/10", "HumanEval/0"])
    return _run(task, tmp / "run")


@pytest.fixture(scope="module")
def seed_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, InstanceResult]:
    """The shipped seed (HumanEval+ canonical solutions) on the same problems."""
    tmp = tmp_path_factory.mktemp("enamel-seed")
    names = ["he000_has_close_elements.py", "he010_make_palindrome.py"]
    task = _task(tmp / "task", {n: (TASK / "seed" / n).read_text(encoding="utf-8") for n in names},
                 ["HumanEval/0", "HumanEval/10"])
    return _run(task, tmp / "run")


def test_wrong_solution_is_caught_with_the_failing_input(candidates: dict[str, InstanceResult]) -> None:
    wrong = candidates["HumanEval/8"]
    assert wrong.status == "ok" and wrong.score == 0.0
    assert wrong.objectives["eff"] == 0.0
    assert 0.9 < wrong.objectives["correctness"] < 1.0  # right on every non-empty input
    feedback = wrong.feedback
    assert "wrong on HumanEval+ input #" in feedback
    assert "sum_product([])" in feedback
    assert "expected: (0, 1)" in feedback and "got: returned (0, 0)" in feedback


def test_faster_correct_solution_gets_a_higher_eff(candidates, seed_results) -> None:
    fast, seed = candidates["HumanEval/10"], seed_results["HumanEval/10"]
    assert fast.status == "ok" and seed.status == "ok", (fast.feedback, seed.feedback)
    assert fast.objectives["correctness"] == 1.0 and seed.objectives["correctness"] == 1.0
    # The seed searches the palindromic suffix by slicing (quadratic); the reference's algorithm is linear.
    assert fast.score > seed.score + 0.25, (fast.feedback, seed.feedback)
    assert fast.score > 0.7
    assert "level 3" in fast.feedback and "TIME LIMIT" not in fast.feedback
    assert fast.objectives["code_tokens"] > 0


def test_time_limit_stops_a_quadratic_solution(candidates, seed_results) -> None:
    slow, seed = candidates["HumanEval/0"], seed_results["HumanEval/0"]
    assert slow.status == "ok", slow.feedback  # stopped per level, not killed by the wall-clock limit
    assert slow.objectives["correctness"] == 1.0
    lines = {line.split(" ", 2)[1]: line for line in slow.feedback.splitlines() if line.startswith("level ")}
    assert "TIME LIMIT EXCEEDED" in lines["3"], slow.feedback
    assert "TIME LIMIT" not in seed.feedback
    # Levels at and above a timeout count 0, whatever the candidate's own clocks said.
    assert slow.score < seed.score - 0.3, (slow.feedback, seed.feedback)
    assert slow.usage is not None and slow.usage["cpu_s"] < 20  # the quadratic runs were cut short


# ---------------------------------------------------------------------------------------------------------
# In-process parts: data, splits, encoding, generators


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"enamel_{name}_under_test", TASK / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def codec() -> Iterator[ModuleType]:
    yield _load("typed_json")


def test_value_encoding_round_trips(codec: ModuleType) -> None:
    values = [(1, [2.5, "x"], None), {3: "a", (1, 2): [True]}, {"k": {1, 2}}, [float("inf"), float("-inf")],
              10**5000, -(10**700), [[], ()], "plain"]
    for value in values:
        text = json.dumps(codec.encode(value), allow_nan=False)
        assert codec.decode(json.loads(text)) == value
    nan = codec.decode(json.loads(json.dumps(codec.encode(float("nan")))))
    assert nan != nan
    assert type(codec.decode(codec.encode((1,)))) is tuple
    with pytest.raises(ValueError, match="not a value"):
        codec.decode({"eval": "1+1"})
    with pytest.raises(TypeError, match="cannot send"):
        codec.encode(object())


def test_digest_compares_as_the_checker_does() -> None:
    sys.path.insert(0, str(ROOT / "sandboxes" / "harness"))
    try:
        ev = _load("evaluate")
    finally:
        sys.path.remove(str(ROOT / "sandboxes" / "harness"))
    assert ev.digest([1, 2.0, True])[0] == ev.digest([1, 2, 1])[0]  # [1, 2.0, True] == [1, 2, 1] in Python
    assert ev.digest([1, 2])[0] != ev.digest({"tuple": [1, 2]})[0]  # a list is not a tuple
    assert ev.digest([1.5])[0] != ev.digest([1])[0]
    assert ev.code_tokens('"""doc"""\ndef f(x):\n    """doc"""\n    # comment\n    return {"a": x}\n') == 12


def test_generators_are_deterministic_and_helpers_sound() -> None:
    gen = _load("enamel_inputs")
    parens = gen.rand_parens(40)
    assert len(parens) == 40 and parens.count("(") == 20
    depth = 0
    for ch in parens:
        depth += 1 if ch == "(" else -1
        assert depth >= 0
    broken, depth, lowest = gen.rand_parens(10, valid=False), 0, 0
    for ch in broken:
        depth += 1 if ch == "(" else -1
        lowest = min(lowest, depth)
    assert lowest < 0  # a closing bracket with nothing open
    for n in (2, 3, 5, 97, 7919):
        assert gen.is_probable_prime(n)
    for n in (1, 4, 561, 30031, 7917):
        assert not gen.is_probable_prime(n)
    p = gen.rand_probably_prime(1000)
    assert 500 <= p <= 1000 and all(p % d for d in range(2, int(p**0.5) + 1))
    doc = json.loads(gzip.decompress((TASK / "data" / "problems.json.gz").read_bytes()))
    problem = next(q for q in doc["problems"] if q["task_id"] == "HumanEval/0")
    scope = gen.generator_namespace(problem["prompt"], problem["generator"])
    first = gen.generate(scope, 50, 1, 2, "seed-a")
    assert first == gen.generate(scope, 50, 1, 2, "seed-a") != gen.generate(scope, 50, 1, 2, "seed-b")


def test_data_splits_and_seed() -> None:
    doc = json.loads(gzip.decompress((TASK / "data" / "problems.json.gz").read_bytes()))
    problems = {p["task_id"]: p for p in doc["problems"]}
    assert len(problems) == 142  # ENAMEL's problem set
    splits = tomllib.loads((TASK / "instances.toml").read_text(encoding="utf-8"))
    ids = [i for split in ("train", "val", "test") for i in splits[split]]
    assert len(ids) == len(set(ids)) == 142 and set(ids) == set(problems)
    assert (len(splits["train"]), len(splits["val"])) == (40, 30)
    for p in problems.values():
        assert (TASK / "seed" / f"{p['module']}.py").is_file()
        assert len(p["levels"]) == 4 and p["inputs"]
    assert len(list((TASK / "seed").glob("he*.py"))) == 142
    for licence in ("LICENSE-ENAMEL.txt", "LICENSE-HumanEvalPlus.txt"):
        assert "Apache License" in (TASK / "data" / licence).read_text(encoding="utf-8")
    assert "ENAMEL" in (TASK / "data" / "ATTRIBUTION.md").read_text(encoding="utf-8")
    task = load_task(TASK)
    assert task.objectives == {"score": "max", "correctness": "max", "eff": "max", "code_tokens": "min"}
    assert {n: o.role for n, o in task.objective_specs.items()} == {
        "score": "optimize", "correctness": "gate", "eff": "report", "code_tokens": "report"}
    assert task.objective_specs["correctness"].at_least == 1.0 and task.accept_rule == "strict"
