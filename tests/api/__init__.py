"""The HTTP API through falcon's test client, services in the same process."""
