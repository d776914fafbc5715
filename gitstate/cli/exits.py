"""The ``gitstate`` command's exit codes, documented in README.md."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DEPLOY_FAILED = 3
#: A gate is closed or a ticket was denied (``gate show``, ``ticket acquire``).
EXIT_GATE_CLOSED = 4
#: A ticket waits in a queue: re-send it with ``--ticket ID --queue``.
EXIT_QUEUED = 5
