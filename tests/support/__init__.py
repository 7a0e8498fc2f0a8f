"""Helpers shared by the tests: paths and environment, polling, ports, PostgreSQL, Prefect, the
shim, stub scripts. Fixtures live in conftest.py; everything else a test needs is here."""
