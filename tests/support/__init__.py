"""Harnesses the tests share: git helpers, fixture repositories, in-process apps."""
