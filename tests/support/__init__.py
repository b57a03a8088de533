"""Helpers shared by the tests: processes of a run, captured consoles, drivers."""
