"""Enhanced (multi-frame) images: frames placed by their per-frame functional groups."""

from __future__ import annotations

import numpy as np
import pytest
from ainode_worker.volume import UnsupportedMultiFrameError, volume_from_datasets
from pydicom import Dataset
from pydicom.sequence import Sequence

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets

GEOMETRY = Geometry(shape=(6, 12, 10), spacing=(2.0, 0.75, 0.75), origin=(0.0, 10.0, -5.0))


def _item(**values: object) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _enhanced(order: list[int]) -> tuple[np.ndarray, Dataset]:
    phantom = make_phantom(GEOMETRY, seed=5)
    slices = list(phantom_datasets(phantom, SeriesIds()))
    positions = [list(s.ImagePositionPatient) for s in slices]
    ds = slices[0]
    ds.NumberOfFrames = len(order)
    ds.PixelData = b"".join(slices[i].PixelData for i in order)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelMeasuresSequence=Sequence(
                    [_item(PixelSpacing=["0.75", "0.75"], SliceThickness="2")]
                ),
                PlaneOrientationSequence=Sequence(
                    [_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])]
                ),
                PixelValueTransformationSequence=Sequence(
                    [_item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")]
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _item(PlanePositionSequence=Sequence([_item(ImagePositionPatient=positions[i])]))
            for i in order
        ]
    )
    return phantom.image, ds


def test_frames_are_sorted_by_position_and_rescaled() -> None:
    image, ds = _enhanced([3, 0, 5, 1, 4, 2])
    volume = volume_from_datasets([ds])
    np.testing.assert_array_equal(volume.array, image.astype(np.float32))
    assert volume.spacing == pytest.approx(GEOMETRY.spacing)
    np.testing.assert_allclose(volume.origin, GEOMETRY.origin)
    assert volume.datasets == [ds]


def test_frames_without_positions_are_refused() -> None:
    _, ds = _enhanced([0, 1, 2, 3, 4, 5])
    del ds.PerFrameFunctionalGroupsSequence
    with pytest.raises(UnsupportedMultiFrameError, match="per-frame"):
        volume_from_datasets([ds])
