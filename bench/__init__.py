"""Benchmarks, kept out of the default test run (see docs/benchmarks.md)."""
