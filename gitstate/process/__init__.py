"""Process plumbing.

The supervisor, the gunicorn server, maintenance, the file-sync client
process.
"""
