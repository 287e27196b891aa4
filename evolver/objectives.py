"""What a task's objectives are for, and how a child is judged against its parent by them.

Each objective has a direction (max or min) and a role:
- `optimize`: acceptance and the frontier use it (at least one objective has this role);
- `gate`: a constraint that must hold. With a bound (`at_least` / `at_most`) it holds per instance: every
  instance the child is evaluated on must meet it wherever its parent met it (a failed instance and a skipped
  test never do), so a gate stops a validation at its first failure, and a seed that fails a test does not
  condemn every child. Without a bound it must not regress against the parent (beyond its tolerance);
- `report`: measured and shown, never judged (a noisy runtime on a quality task, or a number that restates the
  score).
`tolerance` is the noise band of an objective, relative to the parent's value (absolute when that is 0): a
difference inside it is neither an improvement nor a regression.

Acceptance rules over the instances a child is judged on (the score as a sum, other objectives as means over the
instances where both have a value; a value the child lacks where the parent had one is a loss):
- strict: the judged objective improves (the score; when the score is a gate, the first optimized objective);
  ties: it does not get worse;
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
           "judged_first", "meets_gate", "paired", "parse_objectives", "regressed_gate"]


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

    def bound_text(self) -> str:
        """'>= 1' / '<= 5' / '>= 1 and <= 5' ('' without a bound)."""
        return " and ".join(x for x in (f">= {self.at_least:g}" if self.at_least is not None else "",
                                        f"<= {self.at_most:g}" if self.at_most is not None else "") if x)

    def describe(self) -> str:
        extra = self.bound_text() or ("no regression" if self.role == "gate" else "")
        noise = f", tolerance {self.tolerance:g}" if self.tolerance else ""
        return f"{self.name} ({self.direction}, {self.role}{' ' + extra if extra else ''}{noise})"


def accept_rule_for(specs: Mapping[str, Objective], chosen: str | None) -> str:
    """The acceptance rule a run uses: the one chosen, else pareto when the task optimizes more than one
    objective, else strict (on the one it optimizes: `judged_first`)."""
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


def meets_gate(result: Any, spec: Objective) -> bool:
    """Whether one instance meets a bounded gate (a skipped test measured nothing: it does not)."""
    return result.status != "skipped" and spec.meets(instance_value(result, spec.name))


def gate_failures(results: Sequence[Any], specs: Mapping[str, Objective],
                  parents: Sequence[Sequence[Any]] = ()) -> list[str]:
    """Per-instance breaches of bounded gates, one line each (`instance: name = value (status), needs >= b`).
    An instance where every parent given breaks the gate as well is not held against the child: a gate asks
    that nothing breaks that held before (a seed that fails a test does not condemn every child)."""
    before = [{r.instance: r for r in p} for p in parents]
    out = []
    for spec in specs.values():
        if spec.role != "gate" or not spec.bounded:
            continue
        for r in results:
            if meets_gate(r, spec) or (before and all(
                    r.instance in p and not meets_gate(p[r.instance], spec) for p in before)):
                continue
            value = instance_value(r, spec.name)
            shown = "no result" if value is None or r.status == "skipped" else f"{value:.6g}"
            out.append(f"{r.instance}: {spec.name} = {shown} ({r.status}), needs {spec.bound_text()}")
    return out


def paired(child: Sequence[Any], parent: Sequence[Any], name: str) -> tuple[float | None, float | None, bool]:
    """(child's, parent's) aggregate over the instances both were evaluated on: the score as a sum (a failure
    counts 0); any other objective as the mean over the instances where both have a value, with `missing` true
    when the child lacks a value the parent has (it failed where the parent did not)."""
    mine = {r.instance: r for r in child}
    common = [(mine[r.instance], r) for r in parent if r.instance in mine]
    if name == PRIMARY_OBJECTIVE:
        return (sum(instance_value(c, name) or 0.0 for c, _ in common),
                sum(instance_value(p, name) or 0.0 for _, p in common), False)
    values = [(instance_value(c, name), instance_value(p, name)) for c, p in common]
    both = [(a, b) for a, b in values if a is not None and b is not None]
    missing = any(a is None and b is not None for a, b in values)
    if not both:
        return None, None, missing
    return sum(a for a, _ in both) / len(both), sum(b for _, b in both) / len(both), missing


def judged_first(specs: Mapping[str, Objective]) -> str:
    """What strict and ties judge: the score when it is optimized, else the first optimized objective (the score
    may be a gate: a pytest task's tests must pass, and the speed is what improves)."""
    if specs.get(PRIMARY_OBJECTIVE, Objective(PRIMARY_OBJECTIVE)).role == "optimize":
        return PRIMARY_OBJECTIVE
    return next(n for n, o in specs.items() if o.role == "optimize")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # accepted | worse | tie | tradeoff | crashed | gate
    detail: str  # one line per judged objective (and each gate breach)
    gains: tuple[str, ...] = ()  # the objectives it improved
    losses: tuple[str, ...] = ()  # the objectives it regressed


def judge(parent: Sequence[Any], child: Sequence[Any], specs: Mapping[str, Objective], rule: str,
          at_least: bool = False) -> Verdict:
    """The child's results against the parent's on the same instances, by the rule (`at_least`: a child that
    only equals the parent is enough, as for a merge)."""
    if child and all(r.status in FAILED_STATUSES for r in child):
        return Verdict(False, "crashed", "no result on any instance")
    breaches = gate_failures(child, specs, [parent])
    if breaches:
        more = f"; {len(breaches) - 5} more" if len(breaches) > 5 else ""
        return Verdict(False, "gate", "; ".join(breaches[:5]) + more)
    first = judged_first(specs)
    judged = [o for o in specs.values() if (o.role == "gate" and not o.bounded) or
              (o.role == "optimize" and (rule == "pareto" or o.name == first))]
    gains, losses, lines = [], [], []
    for spec in judged:
        a, b, missing = paired(child, parent, spec.name)
        if a is None and b is None and not missing:
            continue
        if missing or a is None or (b is not None and spec.worse(a, b)):
            losses.append(spec.name)
        elif b is None or spec.better(a, b):
            gains.append(spec.name)
        what = "sum" if spec.name == PRIMARY_OBJECTIVE else "mean"
        lines.append(f"{spec.name} {what} {'-' if a is None else f'{a:.4g}'} vs {'-' if b is None else f'{b:.4g}'}"
                     + (" (no value where the parent had one)" if missing else ""))
    detail = "; ".join(lines)
    gate_losses = [n for n in losses if specs[n].role == "gate"]
    if gate_losses:
        return Verdict(False, "gate", f"regressed gate {', '.join(gate_losses)}: {detail}", tuple(gains),
                       tuple(losses))
    if rule == "pareto":
        ok = not losses and (bool(gains) or at_least)
    else:  # strict / ties: one objective (beyond its tolerance, when it has one)
        ok = first in gains or ((rule == "ties" or at_least) and first not in losses)
    if ok:
        return Verdict(True, "accepted", detail, tuple(gains), tuple(losses))
    reason = "tradeoff" if gains and losses else "worse" if losses else "tie"
    return Verdict(False, reason, detail, tuple(gains), tuple(losses))


def regressed_gate(child: Sequence[Any], parents: Sequence[Sequence[Any]], specs: Mapping[str, Objective],
                   complete: bool) -> str | None:
    """During a validation: a bounded gate the child broke on an instance seen so far (where a parent met it);
    once it is complete (`complete`), also an unbounded gate it regressed against a parent. None when the gates
    hold."""
    breaches = gate_failures(child, specs, parents)
    if breaches:
        more = f"; {len(breaches) - 3} more" if len(breaches) > 3 else ""
        return "gate: " + "; ".join(breaches[:3]) + more
    if not complete:
        return None
    for spec in specs.values():
        if spec.role != "gate" or spec.bounded:
            continue
        for parent in parents:
            a, b, missing = paired(child, parent, spec.name)
            if missing or (a is not None and b is not None and spec.worse(a, b)):
                shown = "no value where a parent had one" if missing else f"{a:.4g} from a parent's {b:.4g}"
                return f"gate: {spec.name} regressed: {shown}"
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
    if not any(o.role == "optimize" for o in out.values()):
        raise TaskError(file, "[objectives]", 'at least one objective with role "optimize" (what evolution '
                        "improves)", "none")
    return out


def directions(specs: Mapping[str, Objective], *roles: str) -> dict[str, str]:
    """name -> direction of the objectives with one of `roles` (all when none is given), in declared order;
    the score always first."""
    return {n: o.direction for n, o in specs.items() if not roles or o.role in roles or n == PRIMARY_OBJECTIVE}
