"""Against the real peers: r10k, puppet and chromium, when installed."""
