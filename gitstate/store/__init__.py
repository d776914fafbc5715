"""The state branch.

Snapshot reads, compare-and-swap transactions, the YAML codec, the history
index beside the branch, and waits on its tip.
"""
