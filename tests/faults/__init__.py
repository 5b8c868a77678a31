"""Fault-injection suite (issue 8): kill, corrupt, fill the disk, bad configs, rank failure, signals.

A package, so that its conftest.py is imported as `faults.conftest` and does not replace
tests/conftest.py as the module `conftest` that every test file imports helpers from.
"""
