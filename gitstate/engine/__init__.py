"""The deploy engine: control-repo sources, Puppetfiles, module mirrors, the Forge, and the file-sync storage repository environments are published to."""
