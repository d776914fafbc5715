"""Tests of the HTTP API as a whole (error map, shapes)."""
