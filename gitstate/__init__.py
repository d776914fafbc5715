"""gitstate: Puppet code deploys and deployment gates, with all state in git."""

__version__ = "0.1.0"
