"""What the run has learned from its evaluations, for choosing what to evaluate next: every candidate's known
score per instance (minibatches are drawn to discriminate, engine.plans) and the instances some candidate
broke a bounded gate on (validated first, engine.racing). Filled as evaluations return, and on start from the
store (medians over repeats, as the evaluator folds them)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..objectives import Objective, meets_gate
from ..store import Store


class Knowledge:
    def __init__(self, specs: Mapping[str, Objective]) -> None:
        self.scores: dict[tuple[str, str], float] = {}  # (candidate, instance) -> score
        self.gate_broken: set[str] = set()
        self._bounded = [o for o in specs.values() if o.role == "gate" and o.bounded]

    def learn(self, sha: str, results: Iterable[Any]) -> None:
        """Results of one candidate (anything with instance, status, score, objectives); the caller holds the
        engine's lock."""
        measured = [r for r in results if r.status != "sandbox_error"]
        self.scores.update({(sha, r.instance): r.score for r in measured})
        self.gate_broken.update(r.instance for r in measured for o in self._bounded if not meets_gate(r, o))

    def load(self, store: Store, key: str, trees: Mapping[str, str], ids: Sequence[str]) -> None:
        """Stored results of these candidates (sha -> tree) on these instances, folded over repeats."""
        for sha, tree in trees.items():
            by_instance: dict[str, list[Any]] = {}
            for (instance, _), row in store.cached(key, tree, ids).items():
                by_instance.setdefault(instance, []).append(row)
            self.learn(sha, [_Median(rows) for rows in by_instance.values()])


class _Median:
    """Repeats of one instance as one result: the median score, the first repeat's status and objectives."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self.instance, self.status, self.objectives = rows[0].instance, rows[0].status, rows[0].objectives
        self.score = statistics.median(r.score for r in rows)
