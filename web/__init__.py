"""HTTP layer: Falcon resources translating requests into service calls.

Installed as ``gitstate.web``.
"""
