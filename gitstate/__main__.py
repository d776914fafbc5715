"""Allow ``python -m gitstate``."""

import sys

from gitstate.cli.main import main

sys.exit(main())
