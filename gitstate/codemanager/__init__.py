"""Code Manager's front: deploy requests, waits for every file-sync client, provider webhooks."""
