"""The state branch: snapshot reads, compare-and-swap transactions, the YAML codec, the history index and waits on the tip."""
