"""Resampling a second series onto the first's grid, by patient coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from ainode_worker.volume import MixedSeriesError, Volume, resample_to


def _volume(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    frame: str = "1.2.3",
) -> Volume:
    return Volume(
        array=np.zeros(shape, dtype=np.float32),
        spacing=spacing,
        origin=origin,
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        series_uid="9.9",
        frame_of_reference_uid=frame,
    )


def _linear_field(volume: Volume) -> np.ndarray:
    """A field linear in patient coordinates: trilinear resampling reproduces it exactly."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), axis=-1)
    homogeneous = np.concatenate([index, np.ones((*volume.shape, 1))], axis=-1)
    patient = homogeneous @ volume.affine.T
    return (2.0 * patient[..., 0] - 0.5 * patient[..., 1] + 3.0 * patient[..., 2]).astype(
        np.float32
    )


def test_linear_field_is_reproduced_on_the_reference_grid() -> None:
    moving = _volume((30, 40, 40), (1.0, 1.0, 1.0), (-20.0, -20.0, -15.0))
    moving = moving.with_array(_linear_field(moving))
    reference = _volume((8, 24, 16), (2.5, 1.3, 1.7), (-10.0, -12.0, -5.0))  # inside moving
    resampled = resample_to(moving, reference)
    assert resampled.shape == reference.shape
    np.testing.assert_allclose(resampled.array, _linear_field(reference), atol=1e-3)
    assert resampled.affine.tolist() == reference.affine.tolist()


def test_same_grid_is_passed_through() -> None:
    reference = _volume((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    moving = reference.with_array(np.full(reference.shape, 7.0, dtype=np.float32))
    assert (resample_to(moving, reference).array == 7.0).all()


def test_other_frame_of_reference_is_refused() -> None:
    reference = _volume((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    moving = _volume((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), frame="4.5.6")
    with pytest.raises(MixedSeriesError, match="frames of reference"):
        resample_to(moving, reference)


def test_crop_moves_the_origin() -> None:
    volume = _volume((10, 10, 10), (2.0, 1.0, 0.5), (1.0, 2.0, 3.0))
    cropped = volume.crop((slice(2, 5), slice(3, 10), slice(0, 4)))
    assert cropped.shape == (3, 7, 4)
    np.testing.assert_allclose(
        cropped.affine @ np.array([0, 0, 0, 1.0]), volume.affine @ np.array([2, 3, 0, 1.0])
    )
