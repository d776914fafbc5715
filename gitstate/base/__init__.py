"""Primitives every layer may use.

Host locks, durable flushes, logging, metric definitions, shutdown, file
watches, repository creation and the time formats. Nothing here imports
another part of gitstate except :mod:`gitstate.errors`.
"""
