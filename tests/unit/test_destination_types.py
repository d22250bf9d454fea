"""Destination types without a peer: every kind has a sender, backoff, errors across processes."""

from __future__ import annotations

import pickle

from ainode_worker.destinations import DestinationError, RetryPolicy, registered_kinds

from ainode.jobs import DestinationKind


def test_every_kind_is_registered() -> None:
    assert registered_kinds() == set(DestinationKind)


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(rounds=10, first_delay_s=2.0, factor=3.0, max_delay_s=30.0)
    assert [policy.delay_before(i) for i in range(5)] == [0.0, 2.0, 6.0, 18.0, 30.0]


def test_destination_error_survives_pickling() -> None:
    # Celery moves exceptions between processes by pickling them.
    error = pickle.loads(pickle.dumps(DestinationError("PACS down", retriable=True)))
    assert isinstance(error, DestinationError)
    assert (str(error), error.retriable) == ("PACS down", True)
