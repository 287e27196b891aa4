"""`python -m evolver` is the `evolver` command."""

import sys

from .cli import main

sys.exit(main())
