"""``ainode push``: C-STORE files and folders to a DICOM node with pynetdicom.

Files are scanned once (header only) to learn their SOP classes and transfer syntaxes, so the
association proposes exactly what will be sent, and each file is then sent as it lies on disk,
without decoding or re-encoding its pixel data.
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

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # the DICOM limit on presentation contexts per association
# Parallel associations: while one waits for the peer's C-STORE response, another sends.
DEFAULT_ASSOCIATIONS = 3
CALLING_AET = "AINODE_PUSH"

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
    """Presentation contexts, split into as many associations as the 128-context limit needs."""
    syntaxes: dict[str, set[str]] = defaultdict(set)
    for f in files:
        syntaxes[f.sop_class].add(f.transfer_syntax)
    contexts = [
        build_context(sop, sorted(ts | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
        for sop, ts in sorted(syntaxes.items())
    ]
    return [contexts[i : i + MAX_CONTEXTS] for i in range(0, len(contexts), MAX_CONTEXTS)]


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
    report: PushReport = field(default_factory=PushReport)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send_share(self, share: list[_File], contexts: list[PresentationContext]) -> None:
        ae = AE(ae_title=self.calling_aet)
        ae.maximum_pdu_size = 0  # unlimited: the peer's maximum decides
        ae.requested_contexts = contexts
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            with self.lock:
                self.report.failed += len(share)
            raise PushError(
                f"{self.called_aet}@{self.host}:{self.port} refused or did not answer "
                "the association"
            )
        _no_delay(assoc)
        try:
            for f in share:
                self._record(*_send_one(assoc, f))
        finally:
            assoc.release()

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
) -> PushReport:
    files, skipped = _scan(paths)
    if not files:
        raise PushError("no DICOM files to send")
    sender = _Sender(host, port, called_aet, calling_aet, len(files), progress)
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
    status = assoc.send_c_store(f.path)
    code = getattr(status, "Status", None)
    if code in (0x0000, 0xB000, 0xB007, 0xB006):  # success and warnings
        return True, ""
    shown = f"0x{code:04X}" if isinstance(code, int) else "no response"
    return False, f"{f.path}: status {shown}"
