"""The layering: module-level imports inside evolver form no cycle, and no layer imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "evolver"

# Lower layers first; a module may import its own layer or lower ones at module level.
LAYERS = [
    {"config", "errors", "run_lock", "objectives"},
    {"registry", "task_kinds", "task", "store", "repo", "credentials", "llm", "patch_parsing", "patches", "sandbox"},
    {"evaluation", "function_eval"},
    {"frontier", "evidence", "lessons", "run_state", "hunks"},
    {"proposers"},
    {"engine"},
    {"runs", "views", "eval_report", "init_task"},
    {"api"},
    {"cli", "run_cli", "init_cli", "sandbox_cli", "console", "__main__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """evolver modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("evolver")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            if not module.startswith("evolver"):
                continue
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(k for k, names in enumerate(LAYERS) if top in names)


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_imports_point_down() -> None:
    graph = _graph()
    upward = sorted(f"{m} -> {n}" for m, targets in graph.items() if m != "evolver" for n in targets
                    if n != "evolver" and _layer(n) > _layer(m))
    assert not upward, upward
