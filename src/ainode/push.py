"""``ainode push``: C-STORE files and folders to a DICOM node with pynetdicom.

Files are scanned once (header only) to learn their SOP classes and transfer syntaxes. The
association proposes one presentation context per (SOP class, transfer syntax) found, plus one
uncompressed context per SOP class: a peer accepting a context for a compressed syntax alone
tells exactly whether it takes that syntax (one context offering several syntaxes gets one
chosen, usually an uncompressed one, and the compressed file then has no context to go in).
A file whose syntax was accepted is sent as it lies on disk, without decoding; one whose syntax
was refused is decompressed (or inflated) and sent uncompressed.

An association whose peer stops answering (no C-STORE response within ``dimse_timeout_s``),
or whose answer belongs to no request of ours (pynetdicom: "Received unexpected C-STORE service
message", seen under load against Orthanc), is aborted and the rest of its share is sent again
on a new one, at most :data:`ATTEMPTS` times: a stalled association must not leave a partial
series to become "stable" and fail. A re-sent instance is stored once (same SOP Instance UID).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from ainode.dimse import c_store_status

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # the DICOM limit on presentation contexts per association
# Parallel associations: while one waits for the peer's C-STORE response, another sends.
DEFAULT_ASSOCIATIONS = 3
CALLING_AET = "AINODE_PUSH"
NO_RESPONSE = "no C-STORE response"
ATTEMPTS = 3  # associations tried for one share of files, the first included
DIMSE_TIMEOUT_S = 60.0  # no C-STORE response for this long: the association is stalled
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

Progress = Callable[[int, int], None]


class PushError(RuntimeError):
    """Nothing could be sent: no DICOM files, or the peer refused the association."""


@dataclass
class PushReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class: str
    transfer_syntax: str


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise PushError(f"{path} does not exist")


def _scan(paths: Iterable[Path]) -> tuple[list[_File], int]:
    files, skipped = [], 0
    for path in iter_files(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            files.append(_File(path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            skipped += 1
    return files, skipped


def _contexts(files: list[_File]) -> list[list[PresentationContext]]:
    """One context per (SOP class, transfer syntax) and an uncompressed one per SOP class,
    split into as many associations as the 128-context limit needs (a SOP class's contexts
    always in the same one)."""
    syntaxes: dict[str, set[str]] = defaultdict(set)
    for f in files:
        syntaxes[f.sop_class].add(f.transfer_syntax)
    groups = [
        [build_context(sop, [ts]) for ts in sorted(found - set(UNCOMPRESSED))]
        + [build_context(sop, list(UNCOMPRESSED))]
        for sop, found in sorted(syntaxes.items())
    ]
    chunks: list[list[PresentationContext]] = [[]]
    for group in groups:
        if len(chunks[-1]) + len(group) > MAX_CONTEXTS:
            chunks.append([])
        chunks[-1].extend(group[:MAX_CONTEXTS])
    return chunks


def _no_delay(assoc: Association) -> None:
    """Nagle's algorithm costs ~40 ms per small PDU exchange; DIMSE is request-response."""
    raw = assoc.dul.socket.socket if assoc.dul.socket else None
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class _Sender:
    """What the parallel associations of one push share: the peer and the running report."""

    host: str
    port: int
    called_aet: str
    calling_aet: str
    total: int
    progress: Progress | None
    dimse_timeout_s: float = DIMSE_TIMEOUT_S
    report: PushReport = field(default_factory=PushReport)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send_share(self, share: list[_File], contexts: list[PresentationContext]) -> None:
        """Send ``share``; a stalled or lost association is replaced and the rest re-sent."""
        remaining = list(share)
        for attempt in range(1, ATTEMPTS + 1):
            assoc = self._associate(contexts)
            if assoc is None:
                with self.lock:
                    self.report.failed += len(remaining)
                raise PushError(
                    f"{self.called_aet}@{self.host}:{self.port} refused or did not answer "
                    "the association"
                )
            try:
                while remaining:
                    ok, failure = _send_one(assoc, remaining[0])
                    lost = not assoc.is_established or failure.endswith(NO_RESPONSE)
                    if not ok and lost and attempt < ATTEMPTS:
                        log.warning(
                            "association stalled or lost at %s; re-sending %d file(s) on a new one",
                            remaining[0].path.name,
                            len(remaining),
                        )
                        if assoc.is_established:  # its answers no longer match its requests
                            assoc.abort()
                        break  # the file goes again, on the next association
                    self._record(ok, failure)
                    remaining.pop(0)
            finally:
                if assoc.is_established:
                    assoc.release()
            if not remaining:
                return

    def _associate(self, contexts: list[PresentationContext]) -> Association | None:
        ae = AE(ae_title=self.calling_aet)
        ae.maximum_pdu_size = 0  # unlimited: the peer's maximum decides
        ae.dimse_timeout = self.dimse_timeout_s  # then pynetdicom aborts the association
        ae.requested_contexts = contexts
        for attempt in range(1, ATTEMPTS + 1):
            assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
            if assoc.is_established:
                _no_delay(assoc)
                return assoc
            if assoc.is_rejected:
                return None  # the peer said no: asking again changes nothing
            if attempt < ATTEMPTS:  # aborted or unanswered (a busy peer): ask once more
                log.warning("association to %s aborted or unanswered; trying again", self.host)
        return None

    def _record(self, ok: bool, failure: str) -> None:
        with self.lock:
            if ok:
                self.report.sent += 1
            else:
                self.report.failed += 1
                self.report.failures.append(failure)
            if self.progress:
                self.progress(self.report.sent + self.report.failed, self.total)


def push_paths(
    paths: Iterable[Path],
    *,
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = CALLING_AET,
    associations: int = DEFAULT_ASSOCIATIONS,
    progress: Progress | None = None,
    dimse_timeout_s: float = DIMSE_TIMEOUT_S,
) -> PushReport:
    files, skipped = _scan(paths)
    if not files:
        raise PushError("no DICOM files to send")
    sender = _Sender(host, port, called_aet, calling_aet, len(files), progress, dimse_timeout_s)
    sender.report.skipped = skipped
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=associations) as pool:
        for contexts in _contexts(files):
            wanted = {c.abstract_syntax for c in contexts}
            batch = [f for f in files if f.sop_class in wanted]
            shares = [batch[i::associations] for i in range(associations)]
            futures = [pool.submit(sender.send_share, share, contexts) for share in shares if share]
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors and sender.report.sent == 0:
                raise PushError(str(errors[0]))
            sender.report.failures.extend(str(error) for error in errors)
    sender.report.seconds = time.perf_counter() - started
    return sender.report


def _send_one(assoc: Association, f: _File) -> tuple[bool, str]:
    if not assoc.is_established:
        return False, f"{f.path}: association lost"
    accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    if (f.sop_class, f.transfer_syntax) in accepted:
        status = assoc.send_c_store(f.path)  # as it lies on disk
    elif any((f.sop_class, ts) in accepted for ts in UNCOMPRESSED):
        try:
            dataset = _uncompressed(f)
        except Exception as error:  # any decoder's failure: this file fails, the push goes on
            return False, f"{f.path}: cannot decompress {UID(f.transfer_syntax).name}: {error}"
        status = assoc.send_c_store(dataset)
    else:
        return False, f"{f.path}: the peer accepts SOP class {f.sop_class} in no syntax"
    code = c_store_status(status)
    if code is None:  # timed out, or the answer went astray
        return False, f"{f.path}: {NO_RESPONSE}"
    if code in (0x0000, 0xB000, 0xB007, 0xB006):  # success and warnings
        return True, ""
    return False, f"{f.path}: status 0x{code:04X}"


def _uncompressed(f: _File) -> Dataset:
    """The file's dataset in explicit VR little endian: pixel data decoded, deflate undone."""
    dataset = dcmread(f.path)
    syntax = UID(f.transfer_syntax)
    if syntax.is_compressed:
        dataset.decompress(generate_instance_uid=False)  # the same instance, decoded
    else:  # deflated (or big endian, retired): re-encoded as explicit VR little endian
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.set_original_encoding(False, True)
    return dataset
