"""Installed as ``gitstate.sample_control_repo`` so the demo finds these files."""
