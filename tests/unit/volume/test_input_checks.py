"""Inputs checked before work: each hostile header is refused with a one-line reason, before
any voxel is decoded or allocated (ainode.inputcheck, applied by the worker's volume reader)."""

from __future__ import annotations

import numpy as np
import pytest
from ainode_worker.volume import (
    InconsistentSizeError,
    NoImageError,
    PixelDataError,
    VolumeError,
    VolumeTooLargeError,
    volume_from_datasets,
)
from pydicom import Dataset
from pydicom.uid import SegmentationStorage

from ainode.inputcheck import VolumeBudget
from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets

SMALL = Geometry(shape=(12, 16, 16), spacing=(2.0, 0.8, 0.8))
ROOMY = VolumeBudget(max_voxels=2**30, max_bytes=64 * 2**30)


def _series() -> list[Dataset]:
    return list(phantom_datasets(make_phantom(SMALL, seed=5), SeriesIds()))


def _refusal(datasets: list[Dataset], budget: VolumeBudget = ROOMY) -> VolumeError:
    with pytest.raises(VolumeError) as info:
        volume_from_datasets(datasets, budget)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return info.value


def test_the_untouched_series_passes() -> None:
    volume = volume_from_datasets(_series(), ROOMY)
    assert volume.shape == (12, 16, 16)


@pytest.mark.parametrize("value", ["inf", "1e308", "nan", "-inf"])
def test_non_finite_or_absurd_pixel_spacing_is_refused(value: str) -> None:
    datasets = _series()
    for ds in datasets:
        ds.PixelSpacing = [value, value]
    error = _refusal(datasets)
    assert isinstance(error, InconsistentSizeError)
    assert "PixelSpacing" in str(error) or "must be finite" in str(error), error


def test_nan_orientation_is_refused_naming_it() -> None:
    datasets = _series()
    for ds in datasets:
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "nan", "0"]
    error = _refusal(datasets)
    assert isinstance(error, InconsistentSizeError) and "ImageOrientationPatient" in str(error)
    assert "finite" in str(error)


def test_nan_position_is_refused_naming_it() -> None:
    datasets = _series()
    datasets[4].ImagePositionPatient = ["0", "nan", "0"]
    error = _refusal(datasets)
    assert "ImagePositionPatient must be finite" in str(error)


@pytest.mark.parametrize("bits", [1, 64, 8, 32])
def test_ct_pixel_format_other_than_16_bits_is_refused(bits: int) -> None:
    datasets = _series()
    for ds in datasets:
        ds.BitsAllocated = bits
    error = _refusal(datasets)
    assert isinstance(error, PixelDataError)
    assert f"BitsAllocated {bits} is not a valid pixel format for CT" in str(error)


def test_seg_relabelled_ct_is_no_image() -> None:
    datasets = _series()
    for ds in datasets:
        ds.SOPClassUID = SegmentationStorage
        ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    assert isinstance(_refusal(datasets), NoImageError)


def test_the_69_gib_case_is_refused_before_any_pixel_is_decoded() -> None:
    """12 slices of 64 x 64, 80 mm pixels, 250 mm apart; pixel data cut short, so reaching the
    decoder would raise a PixelDataError instead of the budget's refusal."""
    geometry = Geometry(shape=(12, 64, 64), spacing=(250.0, 80.0, 80.0))
    datasets = list(phantom_datasets(make_phantom(geometry, seed=2), SeriesIds()))
    for ds in datasets:
        ds.PixelData = ds.PixelData[:16]
    budget = VolumeBudget.for_machine(2**30, max_memory_gib=16)
    error = _refusal(datasets, budget)
    assert isinstance(error, VolumeTooLargeError)
    assert "3000 x 5120 x 5120 mm" in str(error) and "job_max_voxels" in str(error)


def test_memory_budget_refuses_what_the_voxel_budget_allows() -> None:
    budget = VolumeBudget(max_voxels=2**40, max_bytes=1024)
    error = _refusal(_series(), budget)
    assert isinstance(error, VolumeTooLargeError) and "job_max_memory_gib" in str(error)


def test_header_declaring_huge_rows_is_refused_by_budget_not_memory_error() -> None:
    datasets = _series()
    for ds in datasets:
        ds.Rows = ds.Columns = 65535
    error = _refusal(datasets, VolumeBudget(max_voxels=10**9, max_bytes=8 * 2**30))
    assert isinstance(error, VolumeTooLargeError)


def test_default_budget_is_sized_for_the_machine() -> None:
    budget = VolumeBudget.for_machine(2**30)
    assert budget.max_bytes > 0
    assert np.isclose(VolumeBudget.for_machine(2**30, 2.0).max_bytes, 2 * 2**30)
