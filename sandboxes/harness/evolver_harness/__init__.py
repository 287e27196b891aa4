"""What runs inside a sandbox: the trusted harness and the untrusted child runner.

Standard library (and pytest, in pytest mode) only: this package must never import evolver, so that the
sandbox image needs nothing of the host but these files.
"""

from .reporting import candidate_dir, report

__all__ = ["candidate_dir", "report"]
