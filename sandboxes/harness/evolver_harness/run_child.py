"""Entry point of the untrusted child: `python -I -S .../evolver_harness/run_child.py RESULT_FD`."""

import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from evolver_harness.child import main  # noqa: E402

if __name__ == "__main__":
    main(int(sys.argv[1]))
