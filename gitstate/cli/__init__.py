"""The ``gitstate`` command.

Its subcommands, the gate commands, the demo and its sample repositories.
"""
