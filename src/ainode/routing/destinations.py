"""Where a rule sends results, written in rules as ``orthanc``, ``dicom:NAME`` or ``dicomweb:NAME``.

``NAME`` is a key of ``remote_modalities`` or ``dicomweb_servers`` in the node's settings (and a
rule's ``notify:`` names keys of ``webhooks``), so the addresses, credentials and secrets of
peers live only in settings and the rules stay shareable.
"""

from __future__ import annotations

from dataclasses import dataclass

from ainode.jobs import Destination, DestinationKind
from ainode.settings import Settings

LOCAL_NAME = "local"


@dataclass(frozen=True)
class KnownDestinations:
    """The peer names configured on this node (PACS, webhooks); rules may only name these."""

    dicom: frozenset[str] = frozenset()
    dicomweb: frozenset[str] = frozenset()
    webhooks: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> KnownDestinations:
        return cls(
            dicom=frozenset(settings.remote_modalities),
            dicomweb=frozenset(settings.dicomweb_servers),
            webhooks=frozenset(settings.webhooks),
        )


def parse_destination(text: str) -> Destination:
    """``"dicom:PACS"`` -> ``Destination(kind=DICOM, name="PACS")``; ValueError if malformed."""
    kind_text, separator, name = text.partition(":")
    kind_text = kind_text.strip().lower()
    name = name.strip()
    if kind_text == DestinationKind.ORTHANC and not separator:
        return Destination(kind=DestinationKind.ORTHANC, name=LOCAL_NAME)
    if kind_text in (DestinationKind.DICOM, DestinationKind.DICOMWEB) and separator and name:
        return Destination(kind=DestinationKind(kind_text), name=name)
    raise ValueError(
        f"{text!r} is not a destination; write 'orthanc' (this node), 'dicom:<modality name>' "
        "or 'dicomweb:<server name>' with a name from the node's settings"
    )


def destination_label(destination: Destination) -> str:
    """The text a rule uses for ``destination`` (inverse of :func:`parse_destination`)."""
    if destination.kind == DestinationKind.ORTHANC:
        return DestinationKind.ORTHANC.value
    return f"{destination.kind.value}:{destination.name}"


def unknown_destination(destination: Destination, known: KnownDestinations) -> str | None:
    """Why ``destination`` is not configured on this node, or None when it is."""
    if destination.kind == DestinationKind.DICOM and destination.name not in known.dicom:
        names = ", ".join(sorted(known.dicom)) or "none configured"
        return (
            f"no DICOM modality named {destination.name!r} in the node's settings "
            f"(remote_modalities: {names})"
        )
    if destination.kind == DestinationKind.DICOMWEB and destination.name not in known.dicomweb:
        names = ", ".join(sorted(known.dicomweb)) or "none configured"
        return (
            f"no DICOMweb server named {destination.name!r} in the node's settings "
            f"(dicomweb_servers: {names})"
        )
    return None
