"""C-STORE results to a remote DICOM modality (a PACS) with pynetdicom.

Presentation contexts are proposed for exactly the SOP classes and transfer syntaxes of the
files being sent (SEG, Label Map SEG, RTSTRUCT, SR...), uncompressed ones with both explicit
and implicit VR little endian so that old PACS accept them too; a compressed file (RLE Label
Map SEG) also gets an uncompressed context and is decompressed if only that one is accepted.
Nagle's algorithm is switched off on the socket: with it, every small PDU waits for the peer's
delayed ACK. A C-STORE that gets no answer of its own (the peer stalled, or pynetdicom's reactor
thread took the response as unexpected) aborts the association and the rest, that file
included, is sent once more on a new one, as ``ainode push`` does; a re-sent instance is stored
once (same SOP Instance UID).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext

from ainode.dimse import c_store_status
from ainode.jobs import Destination, DestinationKind
from ainode.settings import RemoteModality, Settings

from .errors import DestinationError
from .registry import configured, destination_type

logger = logging.getLogger(__name__)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_CONNECT_TIMEOUT_S = 5.0
_NETWORK_TIMEOUT_S = 60.0
_DIMSE_TIMEOUT_S = 120.0
_ASSOCIATIONS = 2  # tried for one send: the second takes what the first left unanswered
_MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255

# C-STORE status groups (PS3.4 Annex B.2.3): 0xA7xx is "out of resources", worth a retry.
_SUCCESS = 0x0000
_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


@destination_type(DestinationKind.DICOM)
class DicomSender:
    """A remote modality from ``settings.remote_modalities[destination.name]``."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self.peer: RemoteModality = configured(
            settings.remote_modalities, destination, "remote modality"
        )
        self.name = destination.name
        self.calling_aet = settings.dicom_aet
        self.dimse_timeout_s = _DIMSE_TIMEOUT_S

    def send(self, files: Sequence[Path]) -> list[str]:
        """C-STORE every file, on one association or, after one went unanswered, on a second;
        return their SOP Instance UIDs."""
        datasets = [pydicom.dcmread(path) for path in files]
        contexts = presentation_contexts(datasets)
        sent: list[str] = []
        for attempt in range(1, _ASSOCIATIONS + 1):
            assoc = open_association(self.peer, self.calling_aet, contexts, self.dimse_timeout_s)
            if not assoc.is_established:
                raise self._association_error(assoc)
            answered = True
            try:
                while answered and len(sent) < len(datasets):
                    uid = self._store(assoc, datasets[len(sent)])
                    if uid is None:
                        answered = False
                    else:
                        sent.append(uid)
            finally:
                if assoc.is_established and answered:
                    assoc.release()
                elif assoc.is_established:
                    assoc.abort()  # its answers no longer match its requests
            if answered:
                logger.info("sent %d instances to %r by C-STORE", len(sent), self.name)
                return sent
            logger.warning(
                "C-STORE to %r unanswered (association %d of %d); %d of %d instance(s) left",
                self.name,
                attempt,
                _ASSOCIATIONS,
                len(datasets) - len(sent),
                len(datasets),
            )
        raise DestinationError(
            f"{self._where} did not answer a C-STORE on {_ASSOCIATIONS} associations "
            f"({len(sent)} of {len(datasets)} instances sent)",
            retriable=True,
        )

    @property
    def _where(self) -> str:
        return f"{self.peer.aet}@{self.peer.host}:{self.peer.port}"

    def _store(self, assoc: Association, ds: Dataset) -> str | None:
        """The instance's UID once stored; None when no answer to this request came back."""
        try:
            response = assoc.send_c_store(_in_accepted_syntax(assoc, ds))
        except ValueError as exc:  # no accepted presentation context for this SOP class
            raise DestinationError(
                f"{self._where} does not accept {ds.SOPClassUID.name}: {exc}", retriable=False
            ) from exc
        code = c_store_status(response)
        if code is None:
            return None
        if code != _SUCCESS and code not in _WARNINGS:
            raise DestinationError(
                f"{self._where} refused {ds.SOPClassUID.name} with status 0x{code:04X}",
                retriable=(code & 0xFF00) == 0xA700,
            )
        return str(ds.SOPInstanceUID)

    def _association_error(self, assoc: Association) -> DestinationError:
        where = self._where
        if assoc.is_rejected:
            return DestinationError(
                f"{where} rejected the association from {self.calling_aet}: check that the "
                "PACS knows this node's AE title and that the called AE title is right",
                retriable=False,
            )
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            refused = sorted({UID(str(cx.abstract_syntax)).name for cx in assoc.rejected_contexts})
            return DestinationError(
                f"{where} does not accept {', '.join(refused)}", retriable=False
            )
        return DestinationError(f"{where} is unreachable or did not answer", retriable=True)


def open_association(
    peer: RemoteModality,
    calling_aet: str,
    contexts: list[PresentationContext],
    dimse_timeout_s: float = _DIMSE_TIMEOUT_S,
) -> Association:
    """Request an association (check ``is_established``); the socket has TCP_NODELAY set."""
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = _CONNECT_TIMEOUT_S
    ae.network_timeout = _NETWORK_TIMEOUT_S
    ae.dimse_timeout = dimse_timeout_s
    ae.requested_contexts = contexts
    return ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.aet,
        evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay), (evt.EVT_PDU_RECV, _mark_rejected)],
    )


def presentation_contexts(datasets: Sequence[Dataset]) -> list[PresentationContext]:
    """Per SOP class: one uncompressed context, and one per compressed syntax of its files."""
    compressed: dict[UID, list[UID]] = {}
    for ds in datasets:
        offered = compressed.setdefault(UID(ds.SOPClassUID), [])
        transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        if transfer_syntax.is_compressed and transfer_syntax not in offered:
            offered.append(transfer_syntax)
    contexts = []
    for sop_class, syntaxes in compressed.items():
        contexts.append(build_context(sop_class, list(_UNCOMPRESSED)))
        contexts.extend(build_context(sop_class, ts) for ts in syntaxes)
    if len(contexts) > _MAX_CONTEXTS:
        raise DestinationError("too many SOP classes for one association", retriable=False)
    return contexts


def _in_accepted_syntax(assoc: Association, ds: Dataset) -> Dataset:
    """``ds`` itself, or decompressed when the peer accepted its SOP class only uncompressed."""
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not transfer_syntax.is_compressed:
        return ds
    accepted = {
        UID(ts)
        for context in assoc.accepted_contexts
        if context.abstract_syntax == ds.SOPClassUID
        for ts in context.transfer_syntax
    }
    if transfer_syntax not in accepted and accepted & set(_UNCOMPRESSED):
        ds.decompress(generate_instance_uid=False)  # lossless: still the same instance
    return ds


def _mark_rejected(event: evt.Event) -> None:
    """Mark the association rejected as soon as the peer's A-ASSOCIATE-RJ arrives.

    pynetdicom 3.0 can report a rejection as an abort: its reader thread closes the socket on
    the A-ASSOCIATE-RJ, and when the requesting thread only then checks that the connection
    opened, it finds it closed and aborts (a peer that answers at once, a loaded machine: 13
    of 200 wrong-AET requests to a local Orthanc). A rejection is final; an abort is retried.
    """
    if isinstance(event.pdu, A_ASSOCIATE_RJ):
        event.assoc.is_rejected = True


def _no_delay(event: evt.Event) -> None:
    """Switch Nagle's algorithm off as soon as the TCP connection is open."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
