"""Helpers shared by the tests (tests/conftest.py puts tests/ on `sys.path`)."""
