"""Destination types, registered by decorator and looked up by ``DestinationKind``.

A destination type is a class built from ``(Destination, Settings)`` whose ``send`` takes the
already-written result files. Adding a type means one module with one decorated class; the
dispatcher never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from ainode.jobs import Destination, DestinationKind
from ainode.settings import Settings

from .errors import DestinationError


class Sender(Protocol):
    """One configured destination, ready to receive files."""

    def send(self, files: Sequence[Path]) -> list[str]:
        """Send every file; return the ids the peer gave them (Orthanc ids or SOP UIDs).

        Raises :class:`DestinationError` unless all files were accepted.
        """
        ...


class SenderType(Protocol):
    def __call__(self, destination: Destination, settings: Settings) -> Sender: ...


_TYPES: dict[DestinationKind, SenderType] = {}


def destination_type(kind: DestinationKind) -> Callable[[SenderType], SenderType]:
    """Class decorator: register the class as the sender for ``kind`` (once per kind)."""

    def register(cls: SenderType) -> SenderType:
        if kind in _TYPES:
            raise ValueError(f"destination type {kind.value!r} is registered twice")
        _TYPES[kind] = cls
        return cls

    return register


def make_sender(destination: Destination, settings: Settings) -> Sender:
    """The sender for a destination; a not-configured one is a non-retriable error."""
    try:
        factory = _TYPES[destination.kind]
    except KeyError:
        raise DestinationError(
            f"no destination type {destination.kind.value!r} is installed", retriable=False
        ) from None
    return factory(destination, settings)


Peer = TypeVar("Peer")


def configured(peers: Mapping[str, Peer], destination: Destination, what: str) -> Peer:
    """The settings' entry the destination names; a name not there is a non-retriable error."""
    try:
        return peers[destination.name]
    except KeyError:
        raise DestinationError(
            f"no {what} named {destination.name!r} in the settings", retriable=False
        ) from None


def registered_kinds() -> frozenset[DestinationKind]:
    return frozenset(_TYPES)
