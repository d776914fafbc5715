"""The ``gitstate`` command: subcommands, the gate commands, the demo and its sample repositories."""
