"""Mutation operators of the builtin proposer: where a Python module can be mutated, and one mutant of it.

Six kinds: perturb a numeric constant, swap an operator, replace a name or literal by another name in scope,
combine an expression with another name (`E + c * N`, `E - c * N`, `E * N`, `E / N`, `E * N ** p`; divisions and
fractional powers guarded), negate a condition or swap if/else branches, drop or duplicate a statement. Which kind
to draw can be steered by `Preferences` (what earlier outcomes of the run suggest); everything random comes from
the rng passed in, so the same seed and preferences give the same mutant.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import libcst as cst
from libcst.metadata import ExpressionContext, ExpressionContextProvider, MetadataWrapper, PositionProvider

from .value_kinds import MODULE, non_numeric_names, non_numeric_node

KINDS = ("perturb", "swap_op", "replace", "combine", "branch", "statement")
BOM = "\ufeff"  # a UTF-8 byte-order mark, as text
FOCUS_P = 0.85  # probability of mutating a function the evidence names, when there is one
LINE_P = 0.5  # probability of mutating a named line of that function, when it has a site there
ARITH = {cst.Add: "+", cst.Subtract: "-", cst.Multiply: "*", cst.Divide: "/"}
COMPARE = {cst.LessThan: "<", cst.LessThanEqual: "<=", cst.GreaterThan: ">", cst.GreaterThanEqual: ">=",
           cst.Equal: "==", cst.NotEqual: "!="}
ATOMS = (cst.Name, cst.Integer, cst.Float, cst.Call, cst.Attribute, cst.Subscript)
TERMINAL = (cst.Return, cst.Raise, cst.Continue, cst.Break, cst.Pass)
SKIPPED = (cst.Decorator, cst.Import, cst.ImportFrom)  # nothing to mutate inside
COEFFICIENTS = (0.1, 0.25, 0.5, 2.0)  # c of `E + c * N` and `E - c * N`
EXPONENTS = (-2, -1, -0.5, 0.5, 2)  # p of `E * N ** p`: scale-free, like `E * N` and `E / N`
# Share of combinations that take the power form: being scale-free, it changes rankings whatever the magnitudes
# of E and N, where `E + c * N` does little until c is tuned. 0.5 with the guard below screened best on jobshop
# (40 seeds; median gap 17.2 vs 17.7 at 0.3 unguarded); 0.5 alone was within noise.
POWER_P = 0.5
# `N` of `E / N` and of a negative or fractional power becomes `max(N, GUARD)`: a name that is sometimes zero or
# negative (a feature that is 0 on some calls) would otherwise crash the child, which costs a minibatch and
# rules the name out as a divisor; guarded, it is a usable term (tiny N -> huge value) and nothing crashes.
GUARD = 1e-9
# Regions tracked while visiting; "local": lambda parameters and comprehension targets are not function locals.
REGIONS = ((cst.Parameters, "params"), (cst.Annotation, "annotation"), (cst.Lambda, "local"), (cst.CompFor, "local"))


@dataclass(frozen=True)
class Preferences:
    """What earlier outcomes suggest: how often each kind was accepted or lost."""

    wins: Mapping[str, int] = field(default_factory=dict)
    losses: Mapping[str, int] = field(default_factory=dict)

    def pick_kind(self, kinds: list[str], rng: random.Random) -> str:
        """Thompson sampling over the kinds available: each kind's Beta(1 + wins, 1 + losses) draw, the largest
        wins. With no history every kind is equally likely; a kind that keeps getting accepted is drawn more."""
        if len(kinds) == 1:
            return kinds[0]
        draws = [(rng.betavariate(1 + self.wins.get(k, 0), 1 + self.losses.get(k, 0)), k) for k in kinds]
        return max(draws)[1]


NO_PREFERENCES = Preferences()


@dataclass(frozen=True)
class Site:
    kind: str
    func: str
    line: int
    node: cst.CSTNode
    names: tuple[str, ...] = ()  # names in scope other than the node's own (replace / combine)
    extra: object = None  # statement sites: (block, index, can_drop, can_duplicate)


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Expr)
            and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


def _has(stmt: cst.CSTNode, kinds: tuple[type, ...]) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and any(isinstance(s, kinds) for s in stmt.body)


@dataclass
class _Scope:
    name: str
    params: list[str]
    assigned: dict[str, int] = field(default_factory=dict)  # local name -> line of its first assignment


class _Collector(cst.CSTVisitor):
    """Collects every mutation site of a module, each with its function and line."""

    METADATA_DEPENDENCIES = (PositionProvider, ExpressionContextProvider)

    def __init__(self, non_numeric: dict[str, frozenset[str]] | None = None) -> None:
        super().__init__()
        self.non_numeric = non_numeric or {}  # function -> names holding text, collections or flags
        self.sites: list[Site] = []
        self.scopes: list[_Scope] = []
        self.arith_children: set[int] = set()
        self.skip_names: set[int] = set()  # Name nodes that are not expressions (keywords of arguments)
        self.top_level: set[int] = set()  # whole values of return / assignment: no parentheses needed
        self.depth = {"params": 0, "annotation": 0, "local": 0}

    def _line(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).start.line

    def _func(self) -> str:
        return self.scopes[-1].name if self.scopes else MODULE

    def _in_body(self) -> bool:
        return bool(self.scopes) and not self.depth["params"] and not self.depth["annotation"]

    def _textual(self) -> frozenset[str]:
        return self.non_numeric.get(self._func(), frozenset()) | self.non_numeric.get(MODULE, frozenset())

    def _names_in_scope(self, line: int) -> list[str]:
        """The numeric names in scope: replacing a number with a string, or combining with one, only crashes."""
        names: set[str] = set()
        for sc in self.scopes:
            names.update(sc.params)
            names.update(n for n, ln in sc.assigned.items() if ln < line)
        return sorted(names - self._textual())

    def _add(self, kind: str, node: cst.CSTNode, **kw: object) -> None:
        self.sites.append(Site(kind, self._func(), self._line(node), node, **kw))  # type: ignore[arg-type]

    # scopes
    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        p = node.params
        params = [x.name.value for x in (*p.posonly_params, *p.params, *p.kwonly_params)]
        self.scopes.append(_Scope(node.name.value, [n for n in params if n not in ("self", "cls")]))
        self.skip_names.add(id(node.name))

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.scopes.pop()

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, SKIPPED):
            return False
        for kind, key in REGIONS:
            if isinstance(node, kind):
                self.depth[key] += 1
        if isinstance(node, cst.ClassDef):
            self.skip_names.add(id(node.name))
        return super().on_visit(node)

    def on_leave(self, original_node: cst.CSTNode) -> None:
        super().on_leave(original_node)
        for kind, key in REGIONS:
            if isinstance(original_node, kind):
                self.depth[key] -= 1

    def visit_Arg(self, node: cst.Arg) -> None:
        self.top_level.add(id(node.value))  # an argument needs no parentheses of its own either
        if node.keyword is not None:
            self.skip_names.add(id(node.keyword))

    # expressions
    def visit_Name(self, node: cst.Name) -> None:
        if not self.scopes or id(node) in self.skip_names:
            return
        ctx = self.get_metadata(ExpressionContextProvider, node, None)
        line = self._line(node)
        if ctx == ExpressionContext.STORE and not self.depth["local"] and not self.depth["params"]:
            self.scopes[-1].assigned.setdefault(node.value, line)
        if ctx != ExpressionContext.LOAD or not self._in_body():
            return
        scope = self._names_in_scope(line)  # a name holding text is not in it: no arithmetic on it
        if node.value in scope and len(scope) > 1:
            others = tuple(n for n in scope if n != node.value)
            self._add("replace", node, names=others)
            self._add("combine", node, names=others, extra=id(node) in self.top_level)

    def _number(self, node: cst.Integer | cst.Float) -> None:
        if self.depth["annotation"]:
            return
        self._add("perturb", node)
        if self._in_body():
            scope = self._names_in_scope(self._line(node))
            if scope:
                self._add("replace", node, names=tuple(scope))

    visit_Integer = visit_Float = _number

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        self.arith_children.update((id(node.left), id(node.right)))
        if type(node.operator) in ARITH and not self.depth["annotation"]:
            textual = self._textual()
            if non_numeric_node(node.left, textual) or non_numeric_node(node.right, textual):
                return  # string or list concatenation, repetition: not arithmetic to swap or combine
            self._add("swap_op", node)
            if self._in_body():
                scope = self._names_in_scope(self._line(node))
                if scope:
                    self._add("combine", node, names=tuple(scope), extra=id(node) in self.top_level)

    def visit_Comparison(self, node: cst.Comparison) -> None:
        self.arith_children.add(id(node.left))
        textual = self._textual()
        for target in node.comparisons:
            self.arith_children.add(id(target.comparator))
            # `state == "idle"` is no ordering to swap: `state < "idle"` means nothing (or raises).
            ordered = not (non_numeric_node(node.left, textual) or non_numeric_node(target.comparator, textual))
            if type(target.operator) in COMPARE and not self.depth["annotation"] and ordered:
                self._add("swap_op", target)

    # statements
    def visit_Return(self, node: cst.Return) -> None:
        if node.value is None or not self._in_body():
            return
        self.top_level.add(id(node.value))
        if non_numeric_node(node.value, self._textual()):
            return
        if not isinstance(node.value, (cst.Name, cst.BinaryOperation)):  # those are combine sites of their own
            scope = self._names_in_scope(self._line(node))
            if scope:
                self._add("combine", node.value, names=tuple(scope), extra=True)

    def visit_Assign(self, node: cst.Assign) -> None:
        self.top_level.add(id(node.value))

    def visit_If(self, node: cst.If) -> None:
        if not self.scopes:
            return
        self._add("branch", node)
        if isinstance(node.orelse, cst.Else):
            self._add("branch", node, extra="swap")

    def visit_IfExp(self, node: cst.IfExp) -> None:
        if self._in_body():
            self._add("branch", node)

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        if not self.scopes:
            return
        body = list(node.body)
        real = [s for i, s in enumerate(body) if not (i == 0 and _is_docstring(s))]
        for i, stmt in enumerate(body):
            if i == 0 and _is_docstring(stmt):
                continue
            last_return = i == len(body) - 1 and _has(stmt, (cst.Return, cst.Raise))
            can_drop = len(real) >= 2 and not last_return
            can_dup = not _has(stmt, TERMINAL)
            if can_drop or can_dup:
                self._add("statement", stmt, extra=(node, i, can_drop, can_dup))


def _fmt_float(x: float) -> str:
    text = f"{x:.3g}"
    return text if any(c in text for c in ".e") else text + ".0"


def _code(module: cst.Module, node: cst.CSTNode) -> str:
    return " ".join(module.code_for_node(node).split())


Mutant = tuple[cst.CSTNode, cst.CSTNode, str]  # the node replaced, its replacement, a description


@dataclass(frozen=True)
class _Env:
    """What every operator may consult besides its site."""

    module: cst.Module
    rng: random.Random
    arith: set[int]  # ids of operands of arithmetic or comparisons
    prefs: Preferences


def _perturb(env: _Env, site: Site) -> Mutant:
    rng = env.rng
    node = site.node
    old = node.evaluated_value  # type: ignore[attr-defined]
    factor = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # log-uniform in [0.5, 2]
    if isinstance(node, cst.Integer) and not (id(node) in env.arith and rng.random() < 0.25):
        new = round(old * factor)
        new = new if new != old else old + rng.choice((-1, 1))
        text = str(new if new >= 0 else old + 1)
    else:  # a float, or an int operand of arithmetic / a comparison that may become one
        text = _fmt_float(float(old) * factor if old else rng.choice((0.1, 0.5, 1.0)))
        if float(text) == float(old):
            text = _fmt_float(float(old) + rng.choice((-0.1, 0.1)) * max(1.0, abs(float(old))))
    return node, cst.parse_expression(text), f"perturb constant {node.value} -> {text}"  # type: ignore[attr-defined]


def _swap_op(env: _Env, site: Site) -> Mutant:
    rng = env.rng
    node = site.node
    table = ARITH if isinstance(node, cst.BinaryOperation) else COMPARE
    old = node.operator  # type: ignore[attr-defined]
    choices = [t for t in table if t is not type(old)]
    if isinstance(node, cst.BinaryOperation) and isinstance(node.right, (cst.Integer, cst.Float)) \
            and not node.right.evaluated_value:
        choices.remove(cst.Divide)  # never divide by a literal zero
    new_type = rng.choice(choices)
    new_op = new_type(whitespace_before=old.whitespace_before, whitespace_after=old.whitespace_after)
    what = "operator" if table is ARITH else "comparison"
    return node, node.with_changes(operator=new_op), f"swap {what} {table[type(old)]} -> {table[new_type]}"


def _replace(env: _Env, site: Site) -> Mutant:
    module, rng = env.module, env.rng
    name = rng.choice(site.names)
    new = cst.Name(name, lpar=getattr(site.node, "lpar", ()), rpar=getattr(site.node, "rpar", ()))
    return site.node, new, f"replace {_code(module, site.node)} with {name}"


def _combine(env: _Env, site: Site) -> Mutant:
    module, rng = env.module, env.rng
    node, other = site.node, rng.choice(site.names)
    code = module.code_for_node(node).strip()
    atom = isinstance(node, ATOMS) or bool(getattr(node, "lpar", ())) or \
        (isinstance(node, cst.UnaryOperation) and not isinstance(node.operator, cst.Not))
    e = code if atom else f"({code})"
    c, form = rng.choice(COEFFICIENTS), rng.choice(("+", "-", "*", "/"))
    guarded = f"max({other}, {GUARD:g})"
    if rng.random() < POWER_P:
        p = rng.choice(EXPONENTS)
        text = f"{e} * {guarded if p < 0 or p != int(p) else other} ** {p:g}"  # a positive integer power is safe
    elif form == "/":
        text = f"{e} / {guarded}"
    else:
        text = f"{e} {form} {other}" if form == "*" else f"{e} {form} {c:g} * {other}"
    # A whole return / assigned value needs no parentheses; anything inside an expression does.
    return node, cst.parse_expression(text if site.extra else f"({text})"), f"combine {_code(module, node)} -> {text}"


def _branch(env: _Env, site: Site) -> Mutant:
    module = env.module
    node = site.node
    if isinstance(node, cst.IfExp):
        return node, node.with_changes(body=node.orelse, orelse=node.body), \
            f"swap branches of `{_code(module, node)}`"
    assert isinstance(node, cst.If)
    if site.extra == "swap":
        assert isinstance(node.orelse, cst.Else)
        new = node.with_changes(body=node.orelse.body, orelse=node.orelse.with_changes(body=node.body))
        return node, new, f"swap if/else branches of `if {_code(module, node.test)}`"
    test = node.test
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        new_test = test.expression.with_changes(lpar=[], rpar=[])
    else:
        new_test = cst.parse_expression(f"not ({module.code_for_node(test).strip()})")
    return node, node.with_changes(test=new_test), f"negate condition `{_code(module, test)}`"


def _statement(env: _Env, site: Site) -> Mutant:
    module, rng = env.module, env.rng
    block, i, can_drop, can_dup = site.extra  # type: ignore[misc]
    body = list(block.body)
    text = _code(module, body[i])[:50]
    if can_drop and (not can_dup or rng.random() < 0.5):
        del body[i]
        return block, block.with_changes(body=body), f"drop statement `{text}`"
    body.insert(i + 1, body[i])
    return block, block.with_changes(body=body), f"duplicate statement `{text}`"


MUTATORS = {"perturb": _perturb, "swap_op": _swap_op, "replace": _replace, "combine": _combine,
            "branch": _branch, "statement": _statement}


def _apply(env: _Env, site: Site) -> tuple[str, str]:
    old, new, desc = MUTATORS[site.kind](env, site)
    where = f" in {site.func}" if site.func != MODULE else ""
    return env.module.deep_replace(old, new).code, f"{desc}{where} (line {site.line})"  # type: ignore[union-attr]


@lru_cache(maxsize=64)
def collect_sites(source: str) -> tuple[cst.Module, list[Site], set[int]] | None:
    """The module as the sites refer to it, its mutation sites, and ids of operands of arithmetic.

    Cached by text: a parent is mutated many times, and libcst nodes are immutable (do not modify the lists).
    """
    try:
        wrapper = MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError:
        return None
    collector = _Collector(non_numeric_names(source))
    wrapper.visit(collector)
    return wrapper.module, collector.sites, collector.arith_children


def _choose(sites: list[Site], rng: random.Random, focus_functions: set[str] | None,
            focus_lines: set[int] | None, prefs: Preferences) -> Site:
    """A function (a focused one with probability FOCUS_P), then a kind (by `prefs`), then a site (a named line
    first)."""
    funcs = sorted({s.func for s in sites})
    focused = [f for f in funcs if focus_functions and f in focus_functions]
    func = rng.choice(focused if focused and rng.random() < FOCUS_P else funcs)
    pool = [s for s in sites if s.func == func]
    on_line = [s for s in pool if focus_lines and s.line in focus_lines]
    if on_line and rng.random() < LINE_P:
        pool = on_line
    kind = prefs.pick_kind(sorted({s.kind for s in pool}, key=KINDS.index), rng)
    return rng.choice([s for s in pool if s.kind == kind])


@dataclass(frozen=True)
class MutantSource:
    source: str
    description: str  # one line: what changed where
    kind: str  # one of KINDS


def mutate_source(source: str, rng: random.Random, focus_functions: set[str] | None = None, *,
                  focus_lines: set[int] | None = None, attempts: int = 20, avoid: set[str] | None = None,
                  prefs: Preferences = NO_PREFERENCES) -> tuple[str, str] | None:
    """`mutate`'s mutant as (source, description)."""
    m = mutate(source, rng, focus_functions, focus_lines=focus_lines, attempts=attempts, avoid=avoid, prefs=prefs)
    return (m.source, m.description) if m is not None else None


def mutate(source: str, rng: random.Random, focus_functions: set[str] | None = None, *,
           focus_lines: set[int] | None = None, attempts: int = 20, avoid: set[str] | None = None,
           prefs: Preferences = NO_PREFERENCES) -> MutantSource | None:
    """One mutant of `source` that parses and differs from it, with a one-line description; None if none.

    `avoid`: descriptions not to produce again (mutations already tried and rejected). Everything but the
    mutated node is kept as it was: line endings, a missing final newline, and a byte-order mark (which libcst
    drops, so it is set aside here and put back)."""
    bom = BOM if source.startswith(BOM) else ""
    source = source[len(bom):]
    found = collect_sites(source)
    if found is None or not found[1]:
        return None
    module, sites, arith = found
    env = _Env(module, rng, arith, prefs)
    for _ in range(attempts):
        site = _choose(sites, rng, focus_functions, focus_lines, prefs)
        try:
            new, desc = _apply(env, site)
        except (cst.ParserSyntaxError, cst.CSTValidationError, ValueError, TypeError, AssertionError):
            continue
        if new == source or (avoid and desc in avoid):
            continue
        try:
            cst.parse_module(new)
            ast.parse(new)
        except (cst.ParserSyntaxError, SyntaxError, ValueError):
            continue
        return MutantSource(bom + new, desc, site.kind)
    return None


__all__ = ["KINDS", "MODULE", "NO_PREFERENCES", "MutantSource", "Preferences", "Site", "collect_sites", "mutate",
           "mutate_source"]
