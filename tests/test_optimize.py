"""evolver.optimize(): a seed text scored by a plain Python function, and a task folder, over a scripted LLM."""

# ruff: noqa: F811 - pytest fixtures are imported from the shared server module by name
from __future__ import annotations

from pathlib import Path

import pytest
from llm_server import scripted_llm  # noqa: F401

import evolver
from evolver.errors import UserInputError

ROOT = Path(__file__).resolve().parent.parent


def rewrite(text: str) -> str:
    return (f"## Diagnosis\nThe answers lack the word please.\n## Change\nAsk politely.\n\n"
            f"```text candidate.txt\n{text}\n```\n")


def politeness(candidate: str, example: dict) -> tuple[float, dict]:
    hits = sum(word in candidate for word in example["words"])
    return hits / len(example["words"]), {"missing": [w for w in example["words"] if w not in candidate]}


def test_seed_text_with_a_function_evaluator(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.add(rewrite("Answer the question, please, and thank you."))
    train = [{"words": ["please", "thank"]}, {"words": ["please"]}, {"words": ["thank", "answer"]}]
    val = [{"words": ["please"]}, {"words": ["thank"]}]
    result = evolver.optimize(seed="Answer the question.", evaluator=politeness, trainset=train, valset=val,
                          objective="Be polite.", model="openai/test-model", api_base=scripted_llm.api_base,
                          max_iterations=1, run_dir=tmp_path / "run")
    assert result.best == "Answer the question, please, and thank you.\n"
    assert result.best_objectives["score"] == 1.0
    assert result.lineage == ("evolver/run/seed", "evolver/run/c1")
    prompt = scripted_llm.prompts()[0]
    assert "Answer the question." in prompt and "missing:" in prompt and "Be polite." in prompt
    # The run directory is resumed by a second call, with the same function.
    scripted_llm.add(rewrite("Answer the question, please, and thank you."))
    again = evolver.optimize(seed="Answer the question.", evaluator=politeness, trainset=train, valset=val,
                         objective="Be polite.", model="openai/test-model", api_base=scripted_llm.api_base,
                         max_iterations=2, run_dir=tmp_path / "run")
    assert again.iterations == 2 and again.best_branch == "evolver/run/c1"


def test_evaluator_exceptions_become_side_information(scripted_llm, tmp_path: Path) -> None:
    def broken(candidate: str, example: int) -> float:
        if example == 2:
            raise ValueError("cannot score example 2")
        return 0.5

    scripted_llm.add(rewrite("better"))
    evolver.optimize(seed="x", evaluator=broken, trainset=[1, 2, 3], valset=[1], model="openai/test-model",
                 api_base=scripted_llm.api_base, max_iterations=1, run_dir=tmp_path / "run")
    prompt = scripted_llm.prompts()[0]  # the minibatch is the whole trainset
    assert "[error] train-1" in prompt and "ValueError: cannot score example 2" in prompt


def test_bad_arguments() -> None:
    with pytest.raises(UserInputError, match=r"exactly one of task= .* or seed="):
        evolver.optimize(model="openai/x")
    with pytest.raises(UserInputError, match="needs evaluator="):
        evolver.optimize(seed="x", model="openai/x")


def test_optimize_and_status_agree_on_every_candidate_and_the_best(tmp_path: Path) -> None:
    from evolver.views import status

    def longer_is_better(candidate: str, example: int) -> tuple[float, dict]:
        return min(1.0, len(candidate) / (10 * example)), {"length": len(candidate)}

    result = evolver.optimize(seed="def f():\n    return 1\n", evaluator=longer_is_better, trainset=[1, 2, 3],
                              valset=[2, 4], model="builtin", max_iterations=12, run_dir=tmp_path / "run",
                              file_name="f.py")
    doc = status(tmp_path / "run")
    assert doc["candidates"], "the run's candidates are visible to status"
    best_row = next(c for c in doc["candidates"] if c["candidate"] == doc["best"])
    assert best_row["objectives"] == result.best_objectives
    assert doc["frontier"] == [b.rsplit("/", 1)[-1] for b in result.frontier]
    assert result.best_branch.endswith("/" + doc["best"])


def test_single_task_search_scores_the_candidate_alone(tmp_path: Path) -> None:
    # One hard problem, no dataset: the evaluator takes only the candidate.
    def packing(candidate: str) -> tuple[float, str]:
        return float(candidate.count("x")), "more x is better"

    seen: list[str] = []

    def spy(candidate: str) -> tuple[float, str]:
        seen.append(candidate)
        return packing(candidate)

    result = evolver.optimize(seed="x = 1\n", evaluator=spy, model="builtin", max_iterations=8,
                              run_dir=tmp_path / "run",
                              file_name="sol.py")
    assert result.mode == "single-task" and result.best is not None and seen
    assert result.best_per_instance == {"task": result.best_branch}


def test_multi_task_search_reports_the_best_candidate_per_task(scripted_llm, tmp_path: Path) -> None:
    from evolver.engine.loop import LoopConfig

    # A dataset and no valset: candidates are validated on the dataset itself, and the result names, for each
    # task, the first candidate that solved it.
    scripted_llm.add(rewrite("alpha"), rewrite("alpha beta"), rewrite("alpha beta gamma"))
    result = evolver.optimize(seed="start", evaluator=lambda c, w: float(w in c), trainset=["alpha", "beta", "gamma"],
                              model="openai/test-model", api_base=scripted_llm.api_base, max_iterations=3,
                              run_dir=tmp_path / "run", loop=LoopConfig(minibatch=3, merge=False))
    assert result.mode == "multi-task" and result.best == "alpha beta gamma\n"
    assert result.best_per_instance == {"train-0": "evolver/run/c1", "train-1": "evolver/run/c2",
                                        "train-2": "evolver/run/c3"}


def test_valset_without_trainset_is_refused() -> None:
    with pytest.raises(UserInputError, match="valset= needs a trainset="):
        evolver.optimize(seed="x", evaluator=lambda c, e: 1.0, valset=[1], model="builtin", max_iterations=1)
