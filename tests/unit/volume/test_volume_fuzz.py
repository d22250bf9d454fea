"""Fuzz of series -> volume (Hypothesis): random stacks, then damaged ones.

Each example draws a regular stack of slices (count, pixel and slice spacing, any orientation,
origin, per-slice rescale), then damages it: slices dropped, positions duplicated, one slice
turned, the order shuffled, odd or invalid rescale values. ``volume_from_datasets`` must either
build the volume the truth predicts — geometry, slice order and CT numbers — or raise the
documented :class:`VolumeError` subclass for the damage done, with a message; never anything
else.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from ainode_worker.volume import (
    DuplicatePositionError,
    InconsistentSizeError,
    MissingSliceError,
    MixedOrientationError,
    NoImageError,
    NonUniformSpacingError,
    PixelDataError,
    SingleFrameError,
    VolumeError,
    volume_from_datasets,
)
from ainode_worker.volume.series import GAP_FACTOR, SPACING_TOLERANCE
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SERIES_UID = generate_uid()
FRAME_UID = generate_uid()
# One value of one slice, as a file would carry it (raw bytes), and the refusal it calls for.
BAD_VALUES: list[tuple[str, bytes, type[VolumeError]]] = [
    ("RescaleSlope", b"0 ", PixelDataError),
    ("RescaleSlope", b"nan ", PixelDataError),
    ("RescaleSlope", b"-inf", PixelDataError),
    ("RescaleSlope", b"abc ", PixelDataError),
    ("RescaleIntercept", b"inf ", PixelDataError),
    ("RescaleIntercept", b"1e39", PixelDataError),  # beyond 32-bit floats
    ("RescaleIntercept", b"x1", PixelDataError),
    ("PixelSpacing", b"0.5 ", InconsistentSizeError),  # one value, not two
    ("PixelSpacing", b"a\\b ", InconsistentSizeError),
    ("ImagePositionPatient", b"1\\2 ", InconsistentSizeError),
    ("ImagePositionPatient", b"1\\2\\z ", InconsistentSizeError),
    ("ImageOrientationPatient", b"1\\0\\0\\0\\1\\?", InconsistentSizeError),
]


@dataclass(frozen=True)
class Stack:
    """The truth: slice k lies at origin + k * gap * normal."""

    count: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # between rows, between columns (mm)
    gap: float
    origin: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    def position(self, k: float) -> np.ndarray:
        return self.origin + k * self.gap * self.normal


def _ds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    assert len(text) <= 16
    return text or "0"


@st.composite
def stacks(draw: st.DrawFn) -> Stack:
    quaternion = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
    if np.linalg.norm(quaternion) < 0.1:
        quaternion = np.array([1.0, 0.0, 0.0, 0.0])
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    # Stored as DICOM writes them (DS text), and the truth is what was stored.
    row = np.array([float(_ds(v)) for v in rotation[:, 0]])
    column = np.array([float(_ds(v)) for v in rotation[:, 1]])
    return Stack(
        count=0 if draw(st.integers(0, 30)) == 0 else draw(st.integers(2, 14)),
        rows=draw(st.integers(1, 5)),
        columns=draw(st.integers(1, 5)),
        pixel_spacing=(draw(st.floats(0.1, 5.0)), draw(st.floats(0.1, 5.0))),
        gap=draw(st.floats(0.3, 10.0)),
        origin=np.array(draw(st.lists(st.floats(-500, 500), min_size=3, max_size=3))),
        row_direction=row / np.linalg.norm(row),
        column_direction=column / np.linalg.norm(column),
    )


def _orientation(stack: Stack, turned: bool) -> list[str]:
    row, column = stack.row_direction, stack.column_direction
    if turned:  # a few degrees about the normal: still orthonormal, another plane
        angle = np.radians(5.0)
        row, column = (
            np.cos(angle) * row + np.sin(angle) * column,
            -np.sin(angle) * row + np.cos(angle) * column,
        )
    return [_ds(v) for v in (*row, *column)]


def _slice(
    stack: Stack,
    k: float,
    stored: np.ndarray,
    slope: str | None,
    intercept: str | None,
    turned: bool,
) -> Dataset:
    """Slice k (fractional: moved off its place along the normal), with these values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FRAME_UID
    ds.Modality = "CT"
    ds.ImagePositionPatient = [_ds(v) for v in stack.position(k)]
    ds.ImageOrientationPatient = _orientation(stack, turned)
    ds.PixelSpacing = [_ds(v) for v in stack.pixel_spacing]
    ds.Rows, ds.Columns = stack.rows, stack.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = stored.astype("<i2").tobytes()
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    return ds


def _stored(stack: Stack, k: int) -> np.ndarray:
    """Slice k's stored values: distinct per slice, so the order can be checked."""
    return (np.arange(stack.rows * stack.columns).reshape(stack.rows, stack.columns) % 97) + (
        k * 100 - 600
    )


@dataclass
class Case:
    stack: Stack
    given: list[int]  # the slices handed over (truth indices), in the order handed over
    datasets: list[Dataset]
    rescale: dict[int, tuple[float, float]]  # truth index -> (slope, intercept)
    bad_value: type[VolumeError] | None  # the refusal one damaged value calls for
    turned: bool
    duplicated: bool
    shifted: dict[int, float]  # truth index -> how far it was moved along the normal (gaps)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    stack = draw(stacks())
    dropping = draw(st.integers(0, 2)) == 0  # then each slice is lost with probability 1/4
    kept = [k for k in range(stack.count) if not (dropping and draw(st.integers(0, 3)) == 0)]
    given = list(kept)
    duplicated = bool(kept) and draw(st.integers(0, 4)) == 0
    if duplicated:
        given.append(draw(st.sampled_from(kept)))
    turned_index = draw(st.integers(0, len(given))) if draw(st.integers(0, 7)) == 0 else None
    shifted: dict[int, float] = {}
    if kept and draw(st.integers(0, 4)) == 0:
        shifted[draw(st.sampled_from(kept))] = draw(st.floats(0.1, 0.4)) * draw(
            st.sampled_from([-1, 1])
        )
    order = draw(st.permutations(range(len(given))))
    slopes = st.sampled_from([None, "1", "1.0", " 2 ", "0.5", "-1", "0.001", "250"])
    intercepts = st.sampled_from([None, "0", "-1024", "3.5", "", "10000", "-0.25"])
    bad_index = draw(st.integers(0, len(given))) if draw(st.integers(0, 5)) == 0 else None
    bad = draw(st.sampled_from(BAD_VALUES))
    rescale: dict[int, tuple[float, float]] = {}
    datasets = []
    for position, k in enumerate(given):
        slope: str | None = draw(slopes)
        intercept: str | None = draw(intercepts)
        rescale[k] = (float(slope or 1), float(intercept or 0))
        turned = position == turned_index
        where = k + shifted.get(k, 0.0)
        ds = _slice(stack, where, _stored(stack, k), slope, intercept, turned)
        if position == bad_index:
            tag = Tag(tag_for_keyword(bad[0]))
            ds[tag] = RawDataElement(tag, "DS", len(bad[1]), bad[1], 0, False, True)  # type: ignore[assignment]
        datasets.append(ds)
    return Case(
        stack=stack,
        given=[given[i] for i in order],
        datasets=[datasets[i] for i in order],
        rescale=rescale,
        bad_value=bad[2] if bad_index is not None and bad_index < len(given) else None,
        turned=turned_index is not None and turned_index < len(given),
        duplicated=duplicated,
        shifted=shifted,
    )


def _place(case: Case, k: int) -> float:
    """Where slice k lies, in units of the true spacing along the normal."""
    return k + case.shifted.get(k, 0.0)


def _steps(case: Case) -> list[float]:
    """The gaps between the slices given, sorted, in units of the true spacing."""
    places = sorted(_place(case, k) for k in set(case.given))
    return [b - a for a, b in itertools.pairwise(places)]


def _expected_errors(case: Case) -> set[type[VolumeError] | None]:
    """The refusal the truth calls for, in the order the reader checks; None: a volume.

    Two answers only where the truth sits exactly on the reader's missing-slice threshold.
    """
    if not case.given:
        return {NoImageError}
    if case.bad_value is not None:
        return {case.bad_value}
    if len(case.given) == 1:
        return {SingleFrameError}
    if case.turned:
        return {MixedOrientationError}
    if case.duplicated:
        return {DuplicatePositionError}
    # Gaps, in units of the true spacing: one well above the usual gap means missing slices;
    # with few slices left the usual gap may itself span missing ones (the volume then has
    # that spacing: it is the truth of the slices given).
    steps = np.array(_steps(case))
    usual = float(np.median(steps))
    threshold = GAP_FACTOR * usual
    uneven: type[VolumeError] | None = None
    if np.max(np.abs(steps - usual)) / usual > SPACING_TOLERANCE:
        uneven = NonUniformSpacingError
    if abs(steps.max() - threshold) < 1e-9:
        return {MissingSliceError, uneven}
    return {MissingSliceError} if steps.max() > threshold else {uneven}


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(cases())
def test_a_volume_matches_the_truth_or_the_damage_is_named(case: Case) -> None:
    expected = _expected_errors(case)
    try:
        volume = volume_from_datasets(case.datasets)
    except VolumeError as error:
        event(type(error).__name__)
        assert str(error), "a refusal must say why"
        assert type(error) in expected, f"expected {expected}, got {type(error).__name__}: {error}"
        return
    event("volume")
    assert None in expected, f"expected {expected}, got a volume"
    stack = case.stack
    kept = sorted(case.given)
    assert volume.shape == (len(kept), stack.rows, stack.columns)
    gap = stack.gap * float(np.median(_steps(case)))
    assert volume.spacing == pytest.approx((gap, *stack.pixel_spacing), rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(volume.row_direction, stack.row_direction, atol=1e-5)
    np.testing.assert_allclose(volume.column_direction, stack.column_direction, atol=1e-5)
    # A stack whose gaps vary within the reader's tolerance is taken as regular: its slices
    # lie within that tolerance of the regular grid.
    drift = SPACING_TOLERANCE * gap * len(kept) if case.shifted else 0.0
    for index, k in enumerate(kept):  # voxel (index, 0, 0) lies where slice k lies
        corner = volume.affine @ np.array([index, 0, 0, 1.0])
        where = stack.position(_place(case, k))
        np.testing.assert_allclose(corner[:3], where, atol=1e-3 + drift)
        slope, intercept = case.rescale[k]
        np.testing.assert_allclose(
            volume.array[index], _stored(stack, k) * slope + intercept, rtol=1e-6, atol=1e-3
        )
    assert [str(ds.ImagePositionPatient[2]) for ds in volume.datasets] == [
        _ds(stack.position(_place(case, k))[2]) for k in kept
    ]
    assert volume.series_uid == SERIES_UID and volume.frame_of_reference_uid == FRAME_UID
