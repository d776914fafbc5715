"""Code Manager's front.

Deploy requests and their waits for every file-sync client; provider
webhooks.
"""
