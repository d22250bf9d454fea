"""Writing decoded slices into the volume: the rescale's arithmetic, the float32 range check and,
with slices written on several threads, the refusal a plain loop over the slices would give."""

from __future__ import annotations

import numpy as np
import pytest
from ainode_worker.volume import PixelDataError, VolumeError, volume_from_datasets
from ainode_worker.volume import series as builder
from pydicom import Dataset

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets

GEOMETRY = Geometry(shape=(12, 16, 20), spacing=(2.0, 0.7, 0.9))
FORMATS = [(8, 0), (16, 0), (16, 1), (32, 0), (32, 1)]  # (BitsAllocated, PixelRepresentation)
RESCALES = [(1.0, 0.0), (1.0, -1024.5), (0.37, 0.0), (0.37, 3.3), (2.5e-3, -1000.0)]


def _datasets(seed: int = 4) -> list[Dataset]:
    return list(phantom_datasets(make_phantom(GEOMETRY, seed=seed), SeriesIds()))


def _dtype(bits: int, signed: int) -> np.dtype[np.integer]:
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def _store(ds: Dataset, stored: np.ndarray, slope: float, intercept: float) -> None:
    """Give ``ds`` these stored values (any integer format, Modality OT) and rescale."""
    bits = stored.dtype.itemsize * 8
    ds.Modality = "OT"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope!r}", f"{intercept!r}"
    ds.PixelData = stored.tobytes()


def _reference(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """What the volume must hold: the values cast to float32, then multiplied and shifted in
    float32 (the steps an identity rescale does not ask for skipped)."""
    expected = stored.astype(np.float32)
    if slope != 1.0:
        expected *= np.float32(slope)
    if intercept != 0.0:
        expected += np.float32(intercept)
    return expected


@pytest.mark.parametrize(("bits", "signed"), FORMATS)
def test_every_pixel_format_and_rescale_gives_the_float32_arithmetic(
    bits: int, signed: int
) -> None:
    """Stored values over the whole range of the format (32-bit ones round in float32), one
    rescale per slice, the slices handed over in reverse order."""
    dtype = _dtype(bits, signed)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(bits + signed)
    datasets = _datasets()
    expected = []
    for index, ds in enumerate(datasets):
        slope, intercept = RESCALES[index % len(RESCALES)]
        stored = rng.integers(info.min, info.max, size=(ds.Rows, ds.Columns), endpoint=True)
        stored = stored.astype(dtype)
        stored[0, :2] = info.min, info.max
        _store(ds, stored, slope, intercept)
        expected.append(_reference(stored, slope, intercept))
    volume = volume_from_datasets(list(reversed(datasets)))
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, np.stack(expected))


def test_values_are_checked_against_float32_only_where_the_format_could_exceed_it() -> None:
    """A slope that could take 16-bit values past float32's range: small values are kept,
    large ones refused."""
    slope = 1e35  # 65535 * 1e35 > 3.4e38 > 1000 * 1e35
    datasets = _datasets()
    small = np.full((datasets[3].Rows, datasets[3].Columns), 1000, dtype="<u2")
    _store(datasets[3], small, slope, 0.0)
    volume = volume_from_datasets(datasets)
    np.testing.assert_array_equal(volume.array[3], _reference(small, slope, 0.0))
    _store(datasets[3], small | 0xF000, slope, 0.0)
    with pytest.raises(PixelDataError, match="exceed the range of 32-bit floats"):
        volume_from_datasets(datasets)


def _too_large(ds: Dataset) -> None:
    _store(ds, np.full((ds.Rows, ds.Columns), 65535, dtype="<u2"), 1e35, 0.0)


def _truncated(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("lower_first", [True, False])
def test_the_refusal_is_that_of_the_lowest_broken_slice_on_any_number_of_threads(
    monkeypatch: pytest.MonkeyPatch, threads: int, lower_first: bool
) -> None:
    """Two slices broken in different ways: the one nearer the start of the stack (in position
    order, not the order given) is the one named, as when slices were written one by one."""
    monkeypatch.setattr(builder, "_FILL_THREADS", threads)
    datasets = _datasets()
    low, high = (_too_large, _truncated) if lower_first else (_truncated, _too_large)
    low(datasets[2])
    high(datasets[9])
    given = datasets[:1] + list(reversed(datasets[1:]))  # the first is decoded before the rest
    with pytest.raises(VolumeError) as refused:
        volume_from_datasets(given)
    assert isinstance(refused.value, PixelDataError)
    reason = "exceed the range" if lower_first else "cannot decode pixel data"
    assert reason in str(refused.value)


def test_the_decoded_values_are_not_kept_on_the_datasets() -> None:
    """The volume is the one full-size copy of the series (pydicom would cache its decoding)."""
    datasets = _datasets()
    volume_from_datasets(datasets)
    assert all(getattr(ds, "_pixel_array", None) is None for ds in datasets)
