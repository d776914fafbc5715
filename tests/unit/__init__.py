"""Library code in one process: real git repositories, no HTTP app, no child processes."""
