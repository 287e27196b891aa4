"""Which names of a module hold values that arithmetic makes no sense on (text, collections, flags), so the
builtin proposer mutates by kind: it never writes `"idle" * max(obs, 1e-09) ** -1` or adds a list to a number.

Read from the code itself, per function: names assigned a string, collection or boolean literal (or an
f-string, a comparison, a boolean expression), parameters and variables annotated with such a type, names
compared with a string (`state == "idle"`, `mode in ("a", "b")`), and loop variables over a literal collection
of strings. A name the code does not tell about is taken to be numeric, as before.
"""

from __future__ import annotations

import ast
from functools import lru_cache

import libcst as cst

NON_NUMERIC_TYPES = frozenset({"str", "bytes", "list", "dict", "set", "tuple", "frozenset", "bool"})
MODULE = "<module>"


def _non_numeric(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes | bool) or node.value is None
    return isinstance(node, ast.JoinedStr | ast.List | ast.Dict | ast.Set | ast.Tuple | ast.ListComp | ast.DictComp
                      | ast.SetComp | ast.GeneratorExp | ast.Compare | ast.BoolOp | ast.Lambda) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not))


def _textual_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(_textual_constant(e) for e in node.elts)
    return isinstance(node, ast.JoinedStr)


def _annotated(annotation: ast.AST | None) -> bool:
    base = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return isinstance(base, ast.Name) and base.id in NON_NUMERIC_TYPES


def _names_of(scope: ast.AST) -> set[str]:
    out: set[str] = set()
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        a = scope.args
        out |= {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs) if _annotated(p.annotation)}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and _non_numeric(node.value):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and (
                _annotated(node.annotation) or _non_numeric(node.value)):
            out.add(node.target.id)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(
                node.ops[0], ast.Eq | ast.NotEq | ast.In | ast.NotIn):
            left, right = node.left, node.comparators[0]
            if isinstance(left, ast.Name) and _textual_constant(right):
                out.add(left.id)
            elif isinstance(right, ast.Name) and _textual_constant(left) and isinstance(node.ops[0], ast.Eq
                                                                                          | ast.NotEq):
                out.add(right.id)
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and _textual_constant(node.iter):
            out.add(node.target.id)
    return out


@lru_cache(maxsize=64)
def non_numeric_names(source: str) -> dict[str, frozenset[str]]:
    """Function name (or MODULE) -> the names that hold non-numeric values there (functions of one name
    share one set: the collector knows functions by name)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, set[str]] = {MODULE: {t.id for n in tree.body if isinstance(n, ast.Assign) and
                                         _non_numeric(n.value) for t in n.targets if isinstance(t, ast.Name)}}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.setdefault(node.name, set()).update(_names_of(node))
    return {k: frozenset(v) for k, v in out.items()}


NON_NUMERIC_CST = (cst.SimpleString, cst.FormattedString, cst.ConcatenatedString, cst.List, cst.Dict, cst.Set,
                   cst.Tuple, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp, cst.Comparison,
                   cst.BooleanOperation, cst.Lambda)


def non_numeric_node(node: cst.CSTNode, names: frozenset[str]) -> bool:
    """Whether an expression is one arithmetic makes no sense on (a literal of text or a collection, a flag, a
    name known to hold one)."""
    if isinstance(node, NON_NUMERIC_CST):
        return True
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Not):
        return True
    if isinstance(node, cst.IfExp):  # either branch's kind is the expression's
        return non_numeric_node(node.body, names) or non_numeric_node(node.orelse, names)
    if isinstance(node, cst.BinaryOperation):  # "a" + b, [x] * 3
        return non_numeric_node(node.left, names) or non_numeric_node(node.right, names)
    return isinstance(node, cst.Name) and (node.value in names or node.value in ("True", "False", "None"))
