"""Server-side git hooks, installed as ``gitstate.hooks``."""
