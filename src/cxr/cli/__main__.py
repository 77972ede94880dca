"""``python -m cxr.cli`` runs the command line (as ``python -m cxr`` does)."""

import sys

from cxr.cli import main

sys.exit(main())
