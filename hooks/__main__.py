"""Allow ``python -m gitstate.hooks post-receive`` (what installed hooks run)."""

import sys

from gitstate.hooks.dispatch import main

sys.exit(main())
