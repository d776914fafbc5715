"""Process plumbing: the supervisor, the gunicorn server, maintenance, the file-sync client process."""
