"""``python -m cxr`` (and ``torchrun ... -m cxr train ...``) runs the command line."""

import sys

from cxr.cli import main

sys.exit(main())
