"""The deploy engine.

Control-repository sources, Puppetfiles, module mirrors, the Forge, and the
file-sync storage repository that environments are published to.
"""
