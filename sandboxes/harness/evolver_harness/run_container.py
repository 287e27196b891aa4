"""Entry point inside a docker sandbox: `python3 -I -S -B .../evolver_harness/run_container.py serve|oneshot DIR`."""

import os
import sys

# Started as a file under -I -S: make the package importable from its parent folder, nothing else.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from evolver_harness.forkserver import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
