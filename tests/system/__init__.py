"""Real processes: gunicorn, deploy workers, file-sync clients, the CLI, writers killed."""
