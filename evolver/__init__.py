"""evolver: reflective evolution of programs.

`evolver.optimize(...)` and `evolver.evaluate(...)` are the Python entry points (see evolver.api).
"""

from typing import Any

__all__ = ["evaluate", "optimize"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so `import evolver` (and the CLI) stays light.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'evolver' has no attribute {name!r}")
