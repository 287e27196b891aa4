"""The builtin proposer: LLM-free, genetic-programming-style mutation of one Python file, guided by evidence.

One mutation per proposal, picked from six kinds: perturb a numeric constant, swap an operator, replace a
name or literal by another name in scope, combine an expression with another name (`E + c * N`, ...),
negate a condition or swap if/else branches, and drop or duplicate a statement. Functions named in the
tracebacks of failing instances (or, without failures, the profile's hot spots) are mutated more often,
and the lines a traceback names more often still. Everything random comes from the rng passed in.
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import libcst as cst
from libcst.metadata import ExpressionContext, ExpressionContextProvider, MetadataWrapper, PositionProvider

from ..evaluation import InstanceResult
from .base import Proposal, ProposalContext

KINDS = ("perturb", "swap_op", "replace", "combine", "branch", "statement")
MODULE = "<module>"
FOCUS_P = 0.85  # probability of mutating a function the evidence names, when there is one
LINE_P = 0.5  # probability of mutating a named line of that function, when it has a site there
ARITH = {cst.Add: "+", cst.Subtract: "-", cst.Multiply: "*", cst.Divide: "/"}
COMPARE = {cst.LessThan: "<", cst.LessThanEqual: "<=", cst.GreaterThan: ">", cst.GreaterThanEqual: ">=",
           cst.Equal: "==", cst.NotEqual: "!="}
ATOMS = (cst.Name, cst.Integer, cst.Float, cst.Call, cst.Attribute, cst.Subscript)
TERMINAL = (cst.Return, cst.Raise, cst.Continue, cst.Break, cst.Pass)
TRACEBACK_RE = re.compile(r'File "([^"]+)", line (\d+), in ([\w<>]+)')
PROFILE_RE = re.compile(r"^(.*):(\d+)\((.+)\)$")
SKIPPED = (cst.Decorator, cst.Import, cst.ImportFrom)  # nothing to mutate inside
# Regions tracked while visiting; "local": lambda parameters and comprehension targets are not function locals.
REGIONS = ((cst.Parameters, "params"), (cst.Annotation, "annotation"), (cst.Lambda, "local"), (cst.CompFor, "local"))


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

    def __init__(self) -> None:
        super().__init__()
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

    def _names_in_scope(self, line: int) -> list[str]:
        names: set[str] = set()
        for sc in self.scopes:
            names.update(sc.params)
            names.update(n for n, ln in sc.assigned.items() if ln < line)
        return sorted(names)

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
        scope = self._names_in_scope(line)
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
            self._add("swap_op", node)
            if self._in_body():
                scope = self._names_in_scope(self._line(node))
                if scope:
                    self._add("combine", node, names=tuple(scope), extra=id(node) in self.top_level)

    def visit_Comparison(self, node: cst.Comparison) -> None:
        self.arith_children.add(id(node.left))
        for target in node.comparisons:
            self.arith_children.add(id(target.comparator))
            if type(target.operator) in COMPARE and not self.depth["annotation"]:
                self._add("swap_op", target)

    # statements
    def visit_Return(self, node: cst.Return) -> None:
        if node.value is None or not self._in_body():
            return
        self.top_level.add(id(node.value))
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


def _perturb(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> Mutant:
    node = site.node
    old = node.evaluated_value  # type: ignore[attr-defined]
    factor = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # log-uniform in [0.5, 2]
    if isinstance(node, cst.Integer) and not (id(node) in arith and rng.random() < 0.25):
        new = round(old * factor)
        new = new if new != old else old + rng.choice((-1, 1))
        text = str(new if new >= 0 else old + 1)
    else:  # a float, or an int operand of arithmetic / a comparison that may become one
        text = _fmt_float(float(old) * factor if old else rng.choice((0.1, 0.5, 1.0)))
        if float(text) == float(old):
            text = _fmt_float(float(old) + rng.choice((-0.1, 0.1)) * max(1.0, abs(float(old))))
    return node, cst.parse_expression(text), f"perturb constant {node.value} -> {text}"  # type: ignore[attr-defined]


def _swap_op(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> Mutant:
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


def _replace(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> Mutant:
    name = rng.choice(site.names)
    new = cst.Name(name, lpar=getattr(site.node, "lpar", ()), rpar=getattr(site.node, "rpar", ()))
    return site.node, new, f"replace {_code(module, site.node)} with {name}"


def _combine(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> Mutant:
    node, other = site.node, rng.choice(site.names)
    code = module.code_for_node(node).strip()
    atom = isinstance(node, ATOMS) or bool(getattr(node, "lpar", ())) or \
        (isinstance(node, cst.UnaryOperation) and not isinstance(node.operator, cst.Not))
    e = code if atom else f"({code})"
    c, form = rng.choice((0.1, 0.25, 0.5, 2.0)), rng.choice(("+", "-", "*"))
    text = f"{e} * {other}" if form == "*" else f"{e} {form} {c:g} * {other}"
    # A whole return / assigned value needs no parentheses; anything inside an expression does.
    return node, cst.parse_expression(text if site.extra else f"({text})"), f"combine {_code(module, node)} -> {text}"


def _branch(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> Mutant:
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


def _statement(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> Mutant:
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


def _apply(module: cst.Module, site: Site, rng: random.Random, arith: set[int]) -> tuple[str, str]:
    old, new, desc = MUTATORS[site.kind](module, site, rng, arith)
    where = f" in {site.func}" if site.func != MODULE else ""
    return module.deep_replace(old, new).code, f"{desc}{where} (line {site.line})"  # type: ignore[union-attr]


@lru_cache(maxsize=64)
def collect_sites(source: str) -> tuple[cst.Module, list[Site], set[int]] | None:
    """The module as the sites refer to it, its mutation sites, and ids of operands of arithmetic.

    Cached by text: a parent is mutated many times, and libcst nodes are immutable (do not modify the lists).
    """
    try:
        wrapper = MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError:
        return None
    collector = _Collector()
    wrapper.visit(collector)
    return wrapper.module, collector.sites, collector.arith_children


def _choose(sites: list[Site], rng: random.Random, focus_functions: set[str] | None,
            focus_lines: set[int] | None) -> Site:
    """A function (a focused one with probability FOCUS_P), then a kind, then a site (a named line first)."""
    funcs = sorted({s.func for s in sites})
    focused = [f for f in funcs if focus_functions and f in focus_functions]
    func = rng.choice(focused if focused and rng.random() < FOCUS_P else funcs)
    pool = [s for s in sites if s.func == func]
    on_line = [s for s in pool if focus_lines and s.line in focus_lines]
    if on_line and rng.random() < LINE_P:
        pool = on_line
    kind = rng.choice(sorted({s.kind for s in pool}, key=KINDS.index))
    return rng.choice([s for s in pool if s.kind == kind])


def mutate_source(source: str, rng: random.Random, focus_functions: set[str] | None = None, *,
                  focus_lines: set[int] | None = None, attempts: int = 20,
                  avoid: set[str] | None = None) -> tuple[str, str] | None:
    """One mutant of `source` that parses and differs from it, with a one-line description; None if none."""
    return _mutate(source, collect_sites(source), rng, focus_functions, focus_lines, attempts, avoid)


def _mutate(source: str, found: tuple[cst.Module, list[Site], set[int]] | None, rng: random.Random,
            focus_functions: set[str] | None, focus_lines: set[int] | None, attempts: int,
            avoid: set[str] | None) -> tuple[str, str] | None:
    if found is None or not found[1]:
        return None
    module, sites, arith = found
    for _ in range(attempts):
        site = _choose(sites, rng, focus_functions, focus_lines)
        try:
            new, desc = _apply(module, site, rng, arith)
        except (cst.ParserSyntaxError, cst.CSTValidationError, ValueError, TypeError, AssertionError):
            continue
        if new == source or (avoid and desc in avoid):
            continue
        try:
            cst.parse_module(new)
            ast.parse(new)
        except (cst.ParserSyntaxError, SyntaxError, ValueError):
            continue
        return new, desc
    return None


@dataclass
class Evidence:
    """What the results point at: functions and lines per file, and a one-line diagnosis."""

    functions: dict[str, set[str]] = field(default_factory=dict)
    lines: dict[str, set[int]] = field(default_factory=dict)
    diagnosis: str = "no failing instances; exploring"


def _match_file(path: str, files: Sequence[str]) -> str | None:
    path = path.replace("\\", "/")
    hits = [f for f in files if path == f or path.endswith("/" + f)]
    return max(hits, key=len) if hits else None


def read_evidence(results: Sequence[InstanceResult], files: Sequence[str]) -> Evidence:
    ev = Evidence()
    failing = [r for r in results if not r.ok]
    innermost: dict[tuple[str, int, str], int] = {}  # the deepest candidate frame of each traceback -> count
    for r in failing:
        frames = [(f, int(line), func) for path, line, func in TRACEBACK_RE.findall(f"{r.feedback}\n{r.stderr}")
                  if (f := _match_file(path, files)) is not None]
        for f, line, func in frames:
            ev.functions.setdefault(f, set()).add(func)
            ev.lines.setdefault(f, set()).add(line)
        if frames:
            innermost[frames[-1]] = innermost.get(frames[-1], 0) + 1
    if innermost:
        (f, line, func), n = max(sorted(innermost.items()), key=lambda kv: kv[1])
        ev.diagnosis = f"traceback in {func} ({f}:{line}) on {n} of {len(failing)} failing instance(s)"
        return ev
    cum: dict[tuple[str, str, int], float] = {}
    for r in results:
        for row in r.profile:
            m = PROFILE_RE.match(str(row.get("function", "")))
            f = _match_file(m.group(1), files) if m else None
            if m and f is not None:
                key = (f, m.group(3), int(m.group(2)))
                cum[key] = cum.get(key, 0.0) + float(row.get("cumtime_s", 0.0) or 0.0)
    hot = sorted(cum.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    for (f, func, _line), _t in hot:
        ev.functions.setdefault(f, set()).add(func)
    if hot:
        (f, func, line), _t = hot[0]
        ev.diagnosis = f"profile hot spot {func} ({f}:{line})"
    if failing:
        statuses = ", ".join(sorted({r.status for r in failing}))
        ev.diagnosis = f"{len(failing)} failing instance(s) ({statuses}) without a traceback into the candidate" \
            + (f"; {ev.diagnosis}" if hot else "; exploring")
    return ev


class BuiltinProposer:
    name = "builtin"

    def __init__(self, max_attempts: int = 20) -> None:
        self.max_attempts = max_attempts

    def propose(self, ctx: ProposalContext, rng: random.Random) -> Proposal:
        files = sorted(p for p, text in ctx.parent_files.items() if p.endswith(".py") and text is not None)
        ev = read_evidence(ctx.results, files)
        if not files:
            return Proposal(failure="noop", diagnosis=ev.diagnosis, detail="no Python file to mutate")
        avoid = {t.strip() for t in ctx.tried}
        sites = {p: collect_sites(ctx.parent_files[p] or "") for p in files}
        candidates = [p for p in files if sites[p] is not None and sites[p][1]]  # type: ignore[index]
        for _ in range(self.max_attempts if candidates else 0):
            hinted = [f for f in candidates if f in ev.functions]
            path = rng.choice(hinted if hinted and rng.random() < FOCUS_P else candidates)
            prefix = f"{path}: " if len(files) > 1 else ""
            got = _mutate(ctx.parent_files[path] or "", sites[path], rng, ev.functions.get(path),
                          ev.lines.get(path), 1, {t[len(prefix):] for t in avoid if t.startswith(prefix)})
            if got is not None:
                new, desc = got
                return Proposal(changes={path: new}, diagnosis=ev.diagnosis, change=prefix + desc)
        return Proposal(failure="noop", diagnosis=ev.diagnosis,
                        detail=f"no mutant that parses and differs from the parent in {self.max_attempts} attempts"
                        if candidates else "nothing mutable in " + ", ".join(files))


__all__ = ["KINDS", "BuiltinProposer", "Evidence", "Site", "collect_sites", "mutate_source", "read_evidence"]
