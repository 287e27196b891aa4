"""Fast engine tests' parts: a task folder of small Python files, an in-process evaluator (the function evaluator
`evolver.optimize` uses: a real SQLite store, no sandbox) and scripted proposers. They satisfy the same
protocols as the sandbox evaluator and the LLM proposers, so the engine runs exactly its production path."""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evolver.engine.budget import Budget
from evolver.engine.loop import Engine, LoopConfig
from evolver.function_eval import FunctionEvaluator
from evolver.lessons import LessonLog
from evolver.proposers.base import Proposal, ProposalContext
from evolver.repo import RunRepo, seed_branch
from evolver.store import Store
from evolver.task import load_task

SEED_SOL = "WEIGHT = 1.0\n\n\nBIAS = 0.0\n\n\ndef f(x):\n    return WEIGHT * x + BIAS\n"


def constants(files: Mapping[str, str]) -> dict[str, float]:
    """The module-level numeric constants of sol.py (how the test evaluators score a candidate)."""
    out = {}
    for node in ast.parse(files["sol.py"]).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            out[node.targets[0].id] = float(node.value.value)  # type: ignore[union-attr]
    return out


def closeness(files: Mapping[str, str], example: dict[str, float]) -> tuple[float, dict[str, Any]]:
    """1 when WEIGHT and BIAS hit the example's targets, less the further they are; side info says how far."""
    c = constants(files)
    miss = abs(c.get("WEIGHT", 0.0) - example["w"]) + abs(c.get("BIAS", 0.0) - example["b"])
    return 1.0 / (1.0 + miss), {"weight_error": c.get("WEIGHT", 0.0) - example["w"]}


def write_task(root: Path, *, train: Sequence[str], val: Sequence[str] = (), mutable: Sequence[str] = ("sol.py",),
               extra: Mapping[str, str] | None = None) -> Path:
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "sol.py").write_text(SEED_SOL)
    for path, text in (extra or {"data.txt": "fixed data\n"}).items():
        (root / "seed" / path).write_text(text)
    (root / "evaluate.py").write_text("def produce(inputs):\n    raise RuntimeError('scored in process')\n\n\n"
                                      "def judge(instance, inputs, output, usage):\n    raise RuntimeError\n")
    (root / "instances.toml").write_text(f"train = {json.dumps(list(train))}\n"
                                         + (f"val = {json.dumps(list(val))}\n" if val else ""))
    (root / "task.toml").write_text(f"[task]\nmutable = {json.dumps(list(mutable))}\n")
    return root


@dataclass
class Scripted:
    """A proposer that returns what the test scripts: one Proposal, or a function of the context, per call."""

    replies: list[Proposal | Callable[[ProposalContext], Proposal]]
    name: str = "scripted"
    seen: list[ProposalContext] = field(default_factory=list)

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal:
        self.seen.append(ctx)
        reply = self.replies.pop(0) if self.replies else Proposal(failure="noop", detail="script exhausted")
        return reply(ctx) if callable(reply) else reply


def set_constant(name: str, value: float) -> Callable[[ProposalContext], Proposal]:
    """A proposal that sets one constant of the parent's sol.py."""
    def make(ctx: ProposalContext) -> Proposal:
        lines = [f"{name} = {value}" if line.startswith(f"{name} = ") else line
                 for line in ctx.parent_files["sol.py"].splitlines()]
        return Proposal(changes={"sol.py": "\n".join(lines) + "\n"}, diagnosis=f"{name} is off",
                        change=f"set {name} to {value}", operator="set")
    return make


@dataclass
class Kit:
    engine: Engine
    seed: str
    run_dir: Path
    store: Store
    calls: list[str]

    def close(self) -> None:
        self.engine.evaluator.close()
        self.store.close()


def make_engine(tmp_path: Path, proposer: Any, *, examples: Mapping[str, dict[str, float]], val: Sequence[str] = (),
                budget: Budget | None = None, merger: Any = None, loop: LoopConfig | None = None,
                score: Callable[..., Any] = closeness, task_dir: Path | None = None) -> Kit:
    """An engine over a function-evaluated task, built the way `evolver run` builds one."""
    train = [k for k in examples if k not in val]
    task_root = task_dir or write_task(tmp_path / "task", train=train, val=val)
    task = load_task(task_root)
    run_dir = tmp_path / "run"
    name = run_dir.resolve().name
    store = Store(run_dir / "run.db")
    loop = loop or LoopConfig(merge=merger is not None)
    budget = budget or Budget(max_iterations=5)
    store.create_run(name, str(task.root), task.digest, {"budget": budget.to_json(), "loop": loop.to_json(),
                                                         "model": {"model": "builtin"},
                                                         "lessons": str(run_dir / "lessons.jsonl")})
    repo = RunRepo.open_or_init(run_dir / "repo")
    seed = repo.commit_folder(task.seed_dir, "seed", kind="seed", run=name)
    repo.set_branch(seed_branch(name), seed)
    store.record_candidate(name, seed, repo.tree_sha(seed), seed_branch(name), (), "seed")
    calls: list[str] = []

    def counted(files: Mapping[str, str], example: dict[str, float]) -> Any:
        calls.append(json.dumps(example, sort_keys=True))
        return score(files, example)

    evaluator = FunctionEvaluator(counted, examples, store, task.digest, None)
    engine = Engine(task=task, run=name, repo=repo, store=store, evaluator=evaluator, proposer=proposer,
                    lessons=LessonLog(run_dir / "lessons.jsonl"), budget=budget, config=loop, merger=merger)
    return Kit(engine, seed, run_dir, store, calls)
