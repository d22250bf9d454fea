"""The interactive service's side of Orthanc: series loaded through the worker's Orthanc client
(:mod:`ainode_worker.orthanc`), and its failures told as the service's own errors.

A first click waits for its series, so a series is read the fast way where that can be
trusted: Orthanc's tags of every instance and the whole series' stored values
(``/series/{id}/numpy?rescale=0``), one request each: 200 requests, not decoding, were most
of what reading 200 files cost. Each slice's tags and stored values then go through the
node's volume builder as a file's do (pydicom decodes them, dropping bits above the high bit
that Orthanc keeps; the builder checks, sorts by position and rescales), so voxels, order,
geometry and refusals are those of the files' route. The full DICOM headers, which only
writing a SEG or a NIfTI needs, are read when first used (:class:`.volumes.DeferredHeaders`).
Series the fast way cannot be trusted with (compressed pixel data, which two decoders may
decode differently, multi-frame or non-MONOCHROME2 images, non-image objects, a series
changing while read) are read from their files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ainode_worker.orthanc import (
    OrthancClient,
    OrthancDataError,
    OrthancError,
    OrthancNotFound,
)
from ainode_worker.volume import Volume

from .errors import SeriesNotFoundError, UpstreamError, VolumeUnusableError
from .volumes import DeferredHeaders, build_volume, volume_from_datasets

log = logging.getLogger(__name__)

# Native (not encapsulated) pixel data: Orthanc's stored values are then the file's samples
# (a big-endian file's swapped by DCMTK as it reads it), as pydicom reads them.
_NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    }
)
# What the volume builder (and pydicom, decoding the pixel data) reads of a slice's header.
_HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImageType",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
)
_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL"})
_FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA = 0x7FE00010


class FastRouteUnavailable(Exception):
    """The series cannot be trusted to the fast route (the message says why); read its files."""


@contextmanager
def orthanc_errors() -> Iterator[None]:
    """Raise an Orthanc failure as the interactive error (and so HTTP status) it means here."""
    try:
        yield
    except OrthancNotFound as error:
        raise SeriesNotFoundError(str(error)) from error
    except OrthancDataError as error:
        raise VolumeUnusableError(str(error)) from error
    except OrthancError as error:
        raise UpstreamError(str(error)) from error


class OrthancVolumeLoader:
    """A :class:`~.volumes.VolumeLoader` reading series out of Orthanc.

    ``fast`` False always reads the files (the reference the fast route is tested against).
    """

    def __init__(self, client: OrthancClient, *, fast: bool = True) -> None:
        self.client = client
        self.fast = fast

    def load(self, series: str) -> Volume:
        with orthanc_errors():
            series_id = self.client.resolve_series(series)
        if self.fast:
            try:
                volume = self.load_fast(series_id)
            except FastRouteUnavailable as why:
                log.info("series %s is read from its files: %s", series_id, why)
            else:
                log.info("loaded series %s from Orthanc's tags and voxels", series_id)
                return volume
        return self.load_files(series_id)

    def load_files(self, series_id: str) -> Volume:
        """Every instance's file, fetched and decoded in parallel, then the volume builder."""
        with orthanc_errors():
            datasets = self.client.series_datasets_parallel(series_id)
        log.info("loaded series %s from Orthanc: %d instances", series_id, len(datasets))
        return volume_from_datasets(datasets)

    def load_fast(self, series_id: str) -> Volume:
        """Orthanc's tags and stored values of the series, stacked by the volume builder;
        raises :class:`FastRouteUnavailable` where that cannot be trusted."""
        try:
            syntaxes = self.client.transfer_syntaxes(series_id)
            ids = list(syntaxes)
            if not ids:
                raise FastRouteUnavailable("Orthanc lists no instances")
            if any(syntax not in _NATIVE_SYNTAXES for syntax in syntaxes.values()):
                raise FastRouteUnavailable(
                    "compressed pixel data (transfer syntaxes "
                    f"{', '.join(sorted(set(syntaxes.values())))})"
                )
            with ThreadPoolExecutor(max_workers=1) as background:
                fetching = background.submit(self.client.series_stored_values, series_id)
                order = self.client.ordered_slices(series_id)
                by_id = self.client.instances_tags(series_id)
                if len(set(order)) != len(order):
                    raise FastRouteUnavailable("multi-frame images")
                if set(by_id) != set(ids) or set(order) != set(ids):
                    raise FastRouteUnavailable("the series' instances changed while it was read")
                headers = {i: slice_header(by_id[i]) for i in ids}  # while the voxels arrive
                values = fetching.result()
        except OrthancError as error:  # the files' route says what it means to the client
            raise FastRouteUnavailable(f"Orthanc did not answer the fast route: {error}") from error
        if values.ndim != 4 or values.shape[0] != len(order) or values.shape[3] != 1:
            raise FastRouteUnavailable(f"Orthanc's voxels have the shape {values.shape}")
        little = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
        slices = [with_frame(headers[i], little[k, ..., 0].data) for k, i in enumerate(order)]
        volume = build_volume(slices)
        instance_of = {id(ds): i for i, ds in zip(order, slices, strict=True)}  # same objects
        ordered = [instance_of[id(ds)] for ds in volume.datasets]
        return replace(volume, datasets=DeferredHeaders(lambda: self._headers(ordered)))

    def _headers(self, instance_ids: list[str]) -> list[Dataset]:
        with orthanc_errors(), ThreadPoolExecutor(self.client.parallel) as pool:
            return list(pool.map(self.client.instance_dataset, instance_ids))


def slice_dataset(tags: Mapping[str, Any], frame: bytes | memoryview) -> Dataset:
    """A slice as the volume builder reads it (:func:`slice_header` with its frame)."""
    return with_frame(slice_header(tags), frame)


def slice_header(tags: Mapping[str, Any]) -> Dataset:
    """Orthanc's values of the attributes the volume builder (and pydicom's decoding) reads."""
    if any(name in tags for name in _FLOAT_PIXELS):
        raise FastRouteUnavailable("floating-point pixel data")
    ds = Dataset()
    for keyword in _HEADER_KEYWORDS:
        value = tags.get(keyword)
        if value is None:
            continue
        if not isinstance(value, str):
            raise FastRouteUnavailable(f"{keyword} is not a plain value")
        try:
            if dictionary_VR(keyword) in _INTEGER_VRS:
                setattr(ds, keyword, int(value) if value.strip() else None)
            else:
                setattr(ds, keyword, value)
        except (TypeError, ValueError) as error:
            raise FastRouteUnavailable(f"{keyword} {value[:32]!r} is not valid") from error
    return ds


def with_frame(ds: Dataset, frame: bytes | memoryview) -> Dataset:
    """``ds`` with Orthanc's stored values of a native syntax as little-endian pixel data,
    which pydicom then decodes as it does the file's; only single greyscale frames of the
    declared size. A memoryview (of a C-contiguous array) is kept as it is, not copied."""
    if isinstance(frame, memoryview):
        frame = frame.cast("B")  # bytes, as pydicom slices and measures pixel data
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as error:
        raise FastRouteUnavailable("not a single image with a known pixel format") from error
    if frames != 1 or bits % 8 or len(frame) != expected * bits // 8:
        raise FastRouteUnavailable("a multi-frame image or a frame of unexpected size")
    if str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME2":
        raise FastRouteUnavailable("not MONOCHROME2")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # pydicom decodes a memoryview as it does bytes, but warns that the type is not OB/OW's.
    ds[_PIXEL_DATA] = DataElement(
        _PIXEL_DATA, "OB" if bits == 8 else "OW", frame, validation_mode=pydicom_config.IGNORE
    )
    return ds
