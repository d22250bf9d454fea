"""Write all outputs a job asks for into one folder, atomically and under stable names.

File names are hashes of the result's own deterministic UIDs (never of a request or of a
patient tag), so a retried job overwrites its earlier files instead of adding new ones, and
a crash mid-write never leaves a truncated file under a final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from ainode.jobs import OutputKind
from ainode.registry import LabelSpec

from .nifti import write_nifti
from .provenance import Provenance
from .rtstruct import write_rtstruct
from .seg import SEG_KINDS, write_seg
from .segments import present_segments
from .sources import Sources, SourceSeries
from .sr import write_sr
from .uids import hashed_uid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenResult:
    """One output file of a job."""

    kind: OutputKind
    path: Path
    sop_instance_uid: str | None = None  # None for NIfTI
    series_instance_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        """True for what may be sent to a PACS (everything but the NIfTI research export)."""
        return self.kind is not OutputKind.NIFTI


def export_results(
    label_map: npt.NDArray[np.integer],
    source_datasets: Sources,
    labels: Sequence[LabelSpec],
    provenance: Provenance,
    outputs: Sequence[OutputKind],
    folder: Path,
    *,
    probabilities: npt.NDArray[np.floating] | None = None,
) -> list[WrittenResult]:
    """Build and save every requested output; nothing is written if the result is empty.

    An SR needs a SEG to reference: it uses the BINARY SEG, else the LABELMAP one, and adds a
    BINARY SEG when neither was requested. Raises :class:`.errors.EmptyResultError` (record it
    on the job) before any file is written.
    """
    present_segments(label_map, labels)  # fail fast: empty or undescribed labels
    sources = SourceSeries.of(source_datasets)  # headers and geometry derived once for all
    wanted = _with_sr_dependency(list(dict.fromkeys(outputs)))
    folder.mkdir(parents=True, exist_ok=True)
    written: list[WrittenResult] = []
    segs: dict[OutputKind, Dataset] = {}
    for kind in wanted:
        if kind in SEG_KINDS:
            seg: Dataset = write_seg(
                label_map,
                sources,
                labels,
                provenance,
                kind=kind,
                probabilities=probabilities,
            )
            segs[kind] = seg
            written.append(save_dicom(seg, kind, folder))
        elif kind is OutputKind.RTSTRUCT:
            rtstruct = write_rtstruct(label_map, sources, labels, provenance)
            written.append(save_dicom(rtstruct, kind, folder))
        elif kind is OutputKind.SR:
            referenced = segs.get(OutputKind.SEG) or segs[OutputKind.SEG_LABELMAP]
            sr = write_sr(referenced, label_map, sources, labels, provenance)
            written.append(save_dicom(sr, kind, folder))
        elif kind is OutputKind.NIFTI:
            written.append(_save_nifti(label_map, sources, provenance, folder))
    logger.info("wrote %d result files", len(written))
    return written


def save_dicom(dataset: Dataset, kind: OutputKind, folder: Path) -> WrittenResult:
    """Write a result object atomically under a name derived from its SOP Instance UID."""
    uid = str(dataset.SOPInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind.value.lower()}-{_digest(uid)}.dcm"
    with _atomic(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return WrittenResult(kind, path, uid, str(dataset.SeriesInstanceUID))


def _save_nifti(
    label_map: npt.NDArray[np.integer],
    sources: SourceSeries,
    provenance: Provenance,
    folder: Path,
) -> WrittenResult:
    key = hashed_uid(
        str(sources.first.SeriesInstanceUID),
        provenance.rule,
        provenance.pipeline,
        provenance.model_version,
        OutputKind.NIFTI.value,
    )
    path = folder / f"labels-{_digest(key)}.nii.gz"
    with _atomic(path) as tmp:
        write_nifti(label_map, sources, tmp)
    return WrittenResult(OutputKind.NIFTI, path)


def _with_sr_dependency(kinds: list[OutputKind]) -> list[OutputKind]:
    """Put a referenceable SEG before the SR."""
    if OutputKind.SR not in kinds:
        return kinds
    kinds.remove(OutputKind.SR)
    if OutputKind.SEG not in kinds and OutputKind.SEG_LABELMAP not in kinds:
        kinds.insert(0, OutputKind.SEG)
    return [*kinds, OutputKind.SR]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:20]


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    suffix = "".join(path.suffixes)
    fd, name = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
