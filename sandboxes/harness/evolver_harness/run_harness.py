"""Entry point of the trusted harness: `python -I -S .../evolver_harness/run_harness.py`."""

import os
import sys

# Started as a file under -I -S: make the package importable from its parent folder, nothing else.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from evolver_harness.trusted import main  # noqa: E402

if __name__ == "__main__":
    main()
