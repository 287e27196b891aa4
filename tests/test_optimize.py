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
