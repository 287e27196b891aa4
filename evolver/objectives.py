"""What a task's objectives are for, and how a child is judged against its parent by them.

Each objective has a direction (max or min) and a role:
- `optimize`: acceptance and the frontier use it;
- `gate`: a constraint that must hold. With a bound (`at_least` / `at_most`) it holds per instance: every
  instance the child is evaluated on must meet it (a failed instance never does; a skipped test is exempt),
  so a gate stops a validation at its first failure. Without a bound it must not regress against the parent
  (beyond its tolerance);
- `report`: measured and shown, never judged (a noisy runtime on a quality task, or a number that restates the
  score).
`tolerance` is the noise band of an objective, relative to the parent's value (absolute when that is 0): a
difference inside it is neither an improvement nor a regression.

Acceptance rules over the instances a child is judged on (the score as a sum, other objectives as means):
- strict: the score is higher; ties: the score is at least as high;
- pareto: at least one optimized objective improves beyond its tolerance and none regresses beyond it.
Under every rule the gates must hold, and a child that produced no result anywhere is rejected as crashed.
Pure functions over results (anything with instance, status, score, objectives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import (
    DIRECTIONS,
    FAILED_STATUSES,
    OBJECTIVE_ROLES,
    PASSING_STATUSES,
    PRIMARY_DIRECTION,
    PRIMARY_OBJECTIVE,
    one_of,
)
from .errors import TaskError

__all__ = ["Objective", "Verdict", "accept_rule_for", "directions", "gate_failures", "instance_value", "judge",
           "parse_objectives", "regressed_gate"]


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str = "max"  # one of config.DIRECTIONS
    role: str = "optimize"  # one of config.OBJECTIVE_ROLES
    tolerance: float = 0.0  # relative noise band (absolute when the reference value is 0)
    at_least: float | None = None  # gates: the bound every instance must meet
    at_most: float | None = None

    def __post_init__(self) -> None:
        assert self.direction in DIRECTIONS and self.role in OBJECTIVE_ROLES, self

    @property
    def bounded(self) -> bool:
        return self.at_least is not None or self.at_most is not None

    def better(self, a: float, b: float) -> bool:
        """a beats b beyond the noise band (b is the reference)."""
        return self._gain(a, b) > self._band(b)

    def worse(self, a: float, b: float) -> bool:
        return self._gain(a, b) < -self._band(b)

    def _gain(self, a: float, b: float) -> float:
        return a - b if self.direction == "max" else b - a

    def _band(self, reference: float) -> float:
        return self.tolerance * (abs(reference) or 1.0)

    def meets(self, value: float | None) -> bool:
        if value is None:
            return False
        return not ((self.at_least is not None and value < self.at_least) or
                    (self.at_most is not None and value > self.at_most))

    def describe(self) -> str:
        bound = [f">= {self.at_least:g}" if self.at_least is not None else "",
                 f"<= {self.at_most:g}" if self.at_most is not None else ""]
        extra = " ".join(b for b in bound if b) or ("no regression" if self.role == "gate" else "")
        noise = f", tolerance {self.tolerance:g}" if self.tolerance else ""
        return f"{self.name} ({self.direction}, {self.role}{' ' + extra if extra else ''}{noise})"


def accept_rule_for(specs: Mapping[str, Objective], chosen: str | None) -> str:
    """The acceptance rule a run uses: the one chosen, else pareto when the task optimizes more than one
    objective, else strict."""
    if chosen:
        return chosen
    return "pareto" if sum(o.role == "optimize" for o in specs.values()) > 1 else "strict"


def instance_value(result: Any, name: str) -> float | None:
    """One instance's value of an objective: None when the candidate produced no usable result there."""
    if name == PRIMARY_OBJECTIVE:
        value = None if result.status in FAILED_STATUSES else result.score
    elif result.status not in PASSING_STATUSES:
        value = None
    else:
        value = result.objectives.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def gate_failures(results: Sequence[Any], specs: Mapping[str, Objective]) -> list[str]:
    """Per-instance gate breaches, one line each (`instance: name = value, needs >= bound`)."""
    out = []
    for spec in specs.values():
        if spec.role != "gate" or not spec.bounded:
            continue
        for r in results:
            if r.status == "skipped":  # a skipped test measured nothing and broke nothing
                continue
            value = instance_value(r, spec.name)
            if not spec.meets(value):
                shown = "no result" if value is None else f"{value:.6g}"
                need = " and ".join(x for x in (f">= {spec.at_least:g}" if spec.at_least is not None else "",
                                                f"<= {spec.at_most:g}" if spec.at_most is not None else "") if x)
                out.append(f"{r.instance}: {spec.name} = {shown} ({r.status}), needs {need}")
    return out


def aggregate(results: Sequence[Any], name: str) -> float | None:
    """The score as a sum (failures count 0), any other objective as the mean over the instances that have it;
    None when no instance does."""
    if name == PRIMARY_OBJECTIVE:
        return sum(instance_value(r, name) or 0.0 for r in results)
    vals = [v for r in results if (v := instance_value(r, name)) is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # accepted | worse | tie | crashed | gate
    detail: str  # one line per judged objective (and each gate breach)
    gains: tuple[str, ...] = ()  # the objectives it improved
    losses: tuple[str, ...] = ()  # the objectives it regressed


def judge(parent: Sequence[Any], child: Sequence[Any], specs: Mapping[str, Objective], rule: str,
          at_least: bool = False) -> Verdict:
    """The child's results against the parent's on the same instances, by the rule (`at_least`: a child that
    only equals the parent is enough, as for a merge)."""
    lines: list[str] = []
    if child and all(r.status in FAILED_STATUSES for r in child):
        return Verdict(False, "crashed", "no result on any instance")
    breaches = gate_failures(child, specs)
    if breaches:
        return Verdict(False, "gate", "; ".join(breaches[:5]) + (f"; {len(breaches) - 5} more" if len(breaches) > 5
                                                                  else ""))
    gains, losses = [], []
    judged = [o for o in specs.values() if o.role == "optimize" or (o.role == "gate" and not o.bounded)]
    if rule != "pareto":
        judged = [o for o in judged if o.name == PRIMARY_OBJECTIVE or o.role == "gate"]
    for spec in judged:
        a, b = aggregate(child, spec.name), aggregate(parent, spec.name)
        if a is None and b is None:
            continue
        if a is None or (b is not None and spec.worse(a, b)):
            losses.append(spec.name)
        elif b is None or spec.better(a, b):
            gains.append(spec.name)
        shown_a = "-" if a is None else f"{a:.4g}"
        shown_b = "-" if b is None else f"{b:.4g}"
        what = "sum" if spec.name == PRIMARY_OBJECTIVE else "mean"
        lines.append(f"{spec.name} {what} {shown_a} vs {shown_b}")
    gate_losses = [n for n in losses if specs[n].role == "gate"]
    if gate_losses:
        return Verdict(False, "gate", f"regressed gate {', '.join(gate_losses)}: " + "; ".join(lines),
                       tuple(gains), tuple(losses))
    if rule == "pareto":
        ok = not losses and (any(specs[n].role == "optimize" for n in gains) or at_least)
    else:  # strict / ties: the score alone (beyond its tolerance, when it has one)
        ok = PRIMARY_OBJECTIVE in gains or ((rule == "ties" or at_least) and PRIMARY_OBJECTIVE not in losses)
    if ok:
        return Verdict(True, "accepted", "; ".join(lines), tuple(gains), tuple(losses))
    reason = "tradeoff" if gains and losses else "worse" if losses else "tie"
    return Verdict(False, reason, "; ".join(lines), tuple(gains), tuple(losses))


def regressed_gate(child: Sequence[Any], parents: Sequence[Sequence[Any]], specs: Mapping[str, Objective],
                   complete: bool) -> str | None:
    """During a validation: a bounded gate the child broke on an instance seen so far; once it is complete
    (`complete`), also an unbounded gate it regressed against a parent. None when the gates hold."""
    breaches = gate_failures(child, specs)
    if breaches:
        more = f"; {len(breaches) - 3} more" if len(breaches) > 3 else ""
        return "gate: " + "; ".join(breaches[:3]) + more
    if not complete:
        return None
    for spec in specs.values():
        if spec.role != "gate" or spec.bounded:
            continue
        a = aggregate(child, spec.name)
        for parent in parents:
            b = aggregate(parent, spec.name)
            if b is not None and (a is None or spec.worse(a, b)):
                shown = "no value" if a is None else f"{a:.4g}"
                return f"gate: {spec.name} regressed to {shown} from a parent's {b:.4g}"
    return None


_SPEC_KEYS = ("direction", "role", "tolerance", "at_least", "at_most")


def parse_objectives(raw: Mapping[str, Any], file: str) -> dict[str, Objective]:
    """task.toml's [objectives]: `name = "max"` (or "min"), or a table `name = { direction = "min",
    role = "report", tolerance = 0.05, at_least = 1.0 }`. The score is added first when missing; it is always
    maximised and never only reported."""
    out: dict[str, Objective] = {}
    for name, value in raw.items():
        where = f"[objectives] {name}"
        if not name.isidentifier():
            raise TaskError(file, where, "an identifier-like objective name", repr(name))
        if isinstance(value, str):
            value = {"direction": value}
        if not isinstance(value, dict):
            raise TaskError(file, where, f"{one_of(DIRECTIONS)} or a table with keys {', '.join(_SPEC_KEYS)}",
                            repr(value))
        unknown = sorted(set(value) - set(_SPEC_KEYS))
        if unknown:
            raise TaskError(file, f"{where}.{unknown[0]}", f"one of {', '.join(_SPEC_KEYS)}", "an unknown key")
        direction, role = value.get("direction", "max"), value.get("role", "optimize")
        if direction not in DIRECTIONS:
            raise TaskError(file, f"{where}.direction" if "direction" in value and len(value) > 1 else where,
                            one_of(DIRECTIONS), repr(direction))
        if role not in OBJECTIVE_ROLES:
            raise TaskError(file, f"{where}.role", one_of(OBJECTIVE_ROLES), repr(role))
        numbers = {}
        for key in ("tolerance", "at_least", "at_most"):
            x = value.get(key)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
                raise TaskError(file, f"{where}.{key}", "a number", repr(x))
            numbers[key] = None if x is None else float(x)
        if (numbers["tolerance"] or 0.0) < 0:
            raise TaskError(file, f"{where}.tolerance", "a number >= 0", repr(value["tolerance"]))
        if role != "gate" and (numbers["at_least"] is not None or numbers["at_most"] is not None):
            raise TaskError(file, where, 'role = "gate" for a bound (at_least / at_most)', f"role = {role!r}")
        if name == PRIMARY_OBJECTIVE and (direction != PRIMARY_DIRECTION or role == "report"):
            raise TaskError(file, where, 'direction "max" and role "optimize" or "gate" (the score is what '
                            "evolution maximises)", f"direction {direction!r}, role {role!r}")
        out[name] = Objective(name, direction, role, numbers["tolerance"] or 0.0, numbers["at_least"],
                              numbers["at_most"])
    if PRIMARY_OBJECTIVE not in out:
        out = {PRIMARY_OBJECTIVE: Objective(PRIMARY_OBJECTIVE), **out}
    return out


def directions(specs: Mapping[str, Objective], *roles: str) -> dict[str, str]:
    """name -> direction of the objectives with one of `roles` (all when none is given), in declared order;
    the score always first."""
    return {n: o.direction for n, o in specs.items() if not roles or o.role in roles or n == PRIMARY_OBJECTIVE}
