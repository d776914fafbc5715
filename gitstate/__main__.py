"""Allow ``python -m gitstate``."""

import sys

from gitstate.cli import main

sys.exit(main())
