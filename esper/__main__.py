"""``python -m esper`` runs the command line (and ``torchrun -m esper``)."""

import sys

from .cli import main

sys.exit(main())
