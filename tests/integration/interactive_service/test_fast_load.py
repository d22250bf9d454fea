"""The fast route (Orthanc's tags + stored values) against the files' route, on a real Orthanc.

Both routes end in the same volume builder; these tests check that what reaches it is the
same: voxels after rescale, slice order, geometry, refusal reasons and, for a SEG, headers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest
import requests
from ainode_worker.interactive.errors import SeriesNotFoundError, VolumeUnusableError
from ainode_worker.interactive.orthanc import FastRouteUnavailable, OrthancVolumeLoader
from ainode_worker.interactive.volumes import DeferredHeaders
from ainode_worker.orthanc import OrthancClient
from ainode_worker.volume import Volume
from pydicom import Dataset
from pydicom.uid import ExplicitVRBigEndian, JPEGLSLossless, RLELossless
from unit.interactive.helpers import OrthancServer, PhantomSeries, phantom_series

from ainode.phantoms import Geometry

SMALL = Geometry(shape=(12, 40, 48), spacing=(2.0, 0.7, 0.8))
SAGITTAL = Geometry(
    shape=(10, 36, 32),
    spacing=(1.5, 0.9, 0.6),
    origin=(-40.0, 10.0, 80.0),
    row_direction=(0.0, 1.0, 0.0),
    column_direction=(0.0, 0.0, -1.0),
)


def _loader(orthanc: OrthancServer) -> OrthancVolumeLoader:
    return OrthancVolumeLoader(OrthancClient(orthanc.url, orthanc.auth, parallel=3))


def _store(orthanc: OrthancServer, series: PhantomSeries, order: list[int] | None = None) -> str:
    """Store the series' datasets (in ``order``: Orthanc's instance order follows arrival)."""
    shuffled = PhantomSeries(
        series.phantom,
        series.ids,
        [series.datasets[i] for i in (order or range(len(series.datasets)))],
        series.volume,
    )
    return orthanc.upload(shuffled)


def _assert_same_volume(fast: Volume, files: Volume) -> None:
    assert fast.array.dtype == files.array.dtype == np.float32
    np.testing.assert_array_equal(fast.array, files.array)
    assert fast.spacing == files.spacing
    assert fast.origin == files.origin
    assert fast.row_direction == files.row_direction
    assert fast.column_direction == files.column_direction
    assert fast.series_uid == files.series_uid
    assert fast.frame_of_reference_uid == files.frame_of_reference_uid
    assert fast.modality == files.modality


def _rescaled(series: PhantomSeries, slope: float, intercept: Callable[[int], float]) -> None:
    """Re-encode each slice with its own RescaleSlope/Intercept, same CT numbers (rounded)."""
    for index, ds in enumerate(series.datasets):
        hu = series.phantom.image[index].astype(np.float64)
        stored = np.rint((hu - intercept(index)) / slope).astype(np.uint16)
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept(index):g}"
        ds.PixelData = stored.tobytes()


def _signed_12_bit(series: PhantomSeries) -> None:
    """CT as many scanners write it: signed 16-bit words holding 12-bit values."""
    for index, ds in enumerate(series.datasets):
        ds.PixelRepresentation = 1
        ds.BitsStored, ds.HighBit = 12, 11
        ds.RescaleIntercept = "0"
        stored = np.clip(series.phantom.image[index], -2048, 2047).astype("<i2")
        ds.PixelData = stored.tobytes()


def _bits_above_high_bit(series: PhantomSeries) -> None:
    """12-bit values in 16-bit words whose top bits are set (old overlays): pydicom ignores
    them, Orthanc's /numpy does not, so its values must go through pydicom too."""
    for ds in series.datasets:
        ds.BitsStored, ds.HighBit = 12, 11
        words = np.frombuffer(ds.PixelData, "<u2") | 0xA000
        ds.PixelData = words.astype("<u2").tobytes()


def _big_endian(series: PhantomSeries) -> None:
    for ds in series.datasets:
        samples = np.frombuffer(ds.PixelData, "<u2")
        ds.PixelData = samples.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


CASES: dict[str, tuple[Geometry, Callable[[PhantomSeries], None] | None]] = {
    "plain": (SMALL, None),
    "per-slice slope and intercept": (
        SMALL,
        lambda s: _rescaled(s, 0.37, lambda i: -1000.0 - 3.5 * i),
    ),
    "signed 12-bit": (SMALL, _signed_12_bit),
    "bits above the high bit": (SMALL, _bits_above_high_bit),
    "sagittal": (SAGITTAL, None),
    "big-endian": (SMALL, _big_endian),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_route_gives_the_files_volume(orthanc: OrthancServer, case: str) -> None:
    geometry, change = CASES[case]
    series = phantom_series(geometry, seed=len(case))
    if change is not None:
        change(series)
    # Arrival order shuffled: Orthanc lists instances as they came, the volume is by position.
    order = list(np.random.default_rng(7).permutation(len(series.datasets)))
    series_id = _store(orthanc, series, order)
    loader = _loader(orthanc)
    fast = loader.load_fast(series_id)
    files = loader.load_files(series_id)
    _assert_same_volume(fast, files)
    if case in ("plain", "bits above the high bit", "sagittal", "big-endian"):  # truth
        np.testing.assert_array_equal(fast.array, series.phantom.image.astype(np.float32))
    # The headers (for a SEG) are not read for the click, and when read are the files' own.
    assert isinstance(fast.datasets, DeferredHeaders) and not fast.datasets.loaded
    assert len(fast.datasets) == len(files.datasets) == geometry.shape[0]
    for header, reference in zip(fast.datasets, files.datasets, strict=True):
        assert "PixelData" not in header
        assert header.to_json_dict() == reference.to_json_dict()


def test_the_service_loads_by_the_fast_route(orthanc: OrthancServer) -> None:
    series = phantom_series(SMALL, seed=3)
    series_id = _store(orthanc, series)
    for reference in (series.uid, series_id):
        volume = _loader(orthanc).load(reference)
        assert isinstance(volume.datasets, DeferredHeaders)
        np.testing.assert_array_equal(volume.array, series.phantom.image.astype(np.float32))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_series_are_read_from_their_files(
    orthanc: OrthancServer, syntax: pydicom.uid.UID
) -> None:
    """Compressed pixel data is decoded by pydicom only (two decoders of a lossy syntax may
    disagree), so the series goes the files' way, one compressed instance being enough."""
    series = phantom_series(Geometry(shape=(6, 32, 32), spacing=(2.5, 0.8, 0.8)), seed=5)
    series.datasets[2].compress(syntax)  # one compressed instance among native ones
    series_id = orthanc.upload(series)
    loader = _loader(orthanc)
    with pytest.raises(FastRouteUnavailable, match="compressed"):
        loader.load_fast(series_id)
    volume = loader.load(series_id)
    assert not isinstance(volume.datasets, DeferredHeaders)
    np.testing.assert_array_equal(volume.array, series.phantom.image.astype(np.float32))


def _drop_slice(series: PhantomSeries) -> list[Dataset]:
    return series.datasets[:5] + series.datasets[6:]


def _zero_spacing(series: PhantomSeries) -> list[Dataset]:
    for ds in series.datasets:
        ds.PixelSpacing = ["0", "0.8"]
    return series.datasets


def _two_orientations(series: PhantomSeries) -> list[Dataset]:
    series.datasets[3].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    return series.datasets


def _zero_slope(series: PhantomSeries) -> list[Dataset]:
    series.datasets[4].RescaleSlope = "0"
    return series.datasets


@pytest.mark.parametrize(
    ("breaks", "reason"),
    [
        (_drop_slice, "missing"),
        (_zero_spacing, "PixelSpacing must be positive"),
        (_two_orientations, "different orientations"),
        (_zero_slope, "RescaleSlope"),
    ],
)
def test_broken_series_are_refused_for_the_same_reason(
    orthanc: OrthancServer, breaks: Callable[[PhantomSeries], list[Dataset]], reason: str
) -> None:
    series = phantom_series(Geometry(shape=(10, 24, 24), spacing=(2.0, 0.8, 0.8)), seed=6)
    datasets = breaks(series)
    series_id = _store(orthanc, PhantomSeries(series.phantom, series.ids, datasets, series.volume))
    loader = _loader(orthanc)
    with pytest.raises(VolumeUnusableError, match=reason) as fast:
        loader.load_fast(series_id)
    with pytest.raises(VolumeUnusableError) as files:
        loader.load_files(series_id)
    assert str(fast.value) == str(files.value)


def test_headers_read_later_fail_clearly_when_the_series_is_gone(
    orthanc: OrthancServer,
) -> None:
    series = phantom_series(Geometry(shape=(4, 16, 16), spacing=(2.0, 0.8, 0.8)), seed=8)
    series_id = orthanc.upload(series)
    volume = _loader(orthanc).load_fast(series_id)
    requests.delete(f"{orthanc.url}/series/{series_id}", auth=orthanc.auth, timeout=30)
    with pytest.raises(SeriesNotFoundError, match="vanished"):
        len(volume.datasets)
