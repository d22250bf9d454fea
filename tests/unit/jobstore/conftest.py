"""Fixtures for the job-store and dispatcher tests: a clock and a store (jobstore_helpers.py)."""

from jobstore_helpers import clock, store

__all__ = ["clock", "store"]
