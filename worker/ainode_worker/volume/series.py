"""DICOM series -> :class:`Volume`, refusing anything that is not one regular stack of slices.

Models assume a regular grid; a series with a missing slice, two acquisitions interleaved or a
sheared (gantry-tilted) stack would be segmented wrongly without any error. So every such case is
refused with a specific :class:`VolumeError` that says what is wrong, and nothing is guessed.
Geometry, pixel format, SOP class and size are checked on the headers (the rules of
:mod:`ainode.inputcheck`, the same the plugin applies before queueing) before any voxel is
allocated or decoded: a header may declare anything.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.pixels.utils import pixel_array

from ainode.inputcheck import (
    VolumeBudget,
    non_image_sop_class,
    orientation_problem,
    pixel_format_problem,
    spacing_problem,
)
from ainode.settings import Settings
from ainode_worker.volume.errors import (
    DuplicatePositionError,
    GantryTiltError,
    InconsistentSizeError,
    LocalizerError,
    MissingSliceError,
    MixedOrientationError,
    MixedSeriesError,
    NoImageError,
    NonUniformSpacingError,
    PixelDataError,
    SingleFrameError,
    UnsupportedMultiFrameError,
    VolumeTooLargeError,
)
from ainode_worker.volume.model import Vector, Volume

log = logging.getLogger(__name__)

# Objects that carry no image of the patient, whatever else they carry.
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG"}
ORIENTATION_TOLERANCE = 1e-4  # difference of direction cosines
SPACING_TOLERANCE = 0.05  # relative deviation of one slice gap from the median gap
GAP_FACTOR = 1.5  # a gap this many times the median gap means missing slices
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Threads decoding and writing slices into the volume: the machine's cores, up to four.
_FILL_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Slice:
    """One 2D image, from a single-frame object or one frame of a multi-frame object."""

    position: npt.NDArray[np.float64]
    orientation: npt.NDArray[np.float64]  # 6 direction cosines
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    pixels: Callable[[], npt.NDArray[np.generic]]
    dataset: Dataset


def default_budget() -> VolumeBudget:
    """The budget of the settings' defaults (half this machine's memory)."""
    return VolumeBudget.for_machine(Settings.model_fields["job_max_voxels"].default)


def volume_from_datasets(datasets: Iterable[Dataset], budget: VolumeBudget | None = None) -> Volume:
    """Build the volume of one series from its datasets, in any order.

    Non-image objects (by Modality or SOP Class) are dropped, localizers too when other images
    remain. Raises a :class:`~ainode_worker.volume.errors.VolumeError` subclass naming the
    problem; :class:`VolumeTooLargeError` before allocating anything over ``budget``
    (default: :func:`default_budget`).
    """
    images = [ds for ds in datasets if _is_image(ds)]
    if not images:
        raise NoImageError("the series holds no images (only non-image objects such as SR or SEG)")
    _check_one_series(images)
    localizers = [ds for ds in images if _is_localizer(ds)]
    if localizers and len(localizers) == len(images):
        raise LocalizerError(
            "the series holds only localizer (scout) images, which are projections, not slices"
        )
    if localizers:
        log.info("ignoring %d localizer image(s) in the series", len(localizers))
        images = [ds for ds in images if not _is_localizer(ds)]
    slices = [s for ds in images for s in _slices_of(ds)]
    if len(slices) == 1:
        raise SingleFrameError("the series has a single image; a 3D model needs a stack of slices")
    return _stack(slices, images, budget or default_budget())


def _is_image(ds: Dataset) -> bool:
    if str(getattr(ds, "Modality", "")).upper() in _NON_IMAGE_MODALITIES:
        return False
    if non_image_sop_class(str(getattr(ds, "SOPClassUID", ""))):
        return False  # e.g. a SEG relabelled Modality CT
    return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def _is_localizer(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    return "LOCALIZER" in image_type


def _check_one_series(images: Sequence[Dataset]) -> None:
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in images}
    if len(series) > 1:
        raise MixedSeriesError(f"images of {len(series)} different series were given as one")
    frames = {str(getattr(ds, "FrameOfReferenceUID", "")) for ds in images}
    if len(frames) > 1:
        raise MixedSeriesError(f"images in {len(frames)} frames of reference were given as one")


def _floats(value: object, count: int, what: str) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as error:
        raise InconsistentSizeError(f"{what} is missing or not numeric") from error
    if array.shape != (count,):
        raise InconsistentSizeError(f"{what} must have {count} values, has {array.size}")
    if not np.all(np.isfinite(array)):
        raise InconsistentSizeError(f"{what} must be finite, not {[f'{v:.6g}' for v in array]}")
    return array


def _check_pixel_format(ds: Dataset) -> None:
    problem = pixel_format_problem(
        str(getattr(ds, "Modality", "")),
        getattr(ds, "BitsAllocated", ""),
        getattr(ds, "SamplesPerPixel", 1),
    )
    if problem:
        raise PixelDataError(problem)


def _slices_of(ds: Dataset) -> list[_Slice]:
    _check_pixel_format(ds)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        return _frames_of(ds, frames)
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise InconsistentSizeError("an image has no ImagePositionPatient/ImageOrientationPatient")
    return [_plane(ds, ds, ds, ds, ds, partial(_decode, ds))]


def _plane(
    ds: Dataset,
    position: Dataset,
    orientation: Dataset,
    measures: Dataset,
    rescale: Dataset | None,
    pixels: Callable[[], npt.NDArray[np.generic]],
) -> _Slice:
    """One slice of ``ds`` from the items carrying its plane's tags: the image itself, or one
    frame's functional groups."""
    spacing = _floats(measures.get("PixelSpacing"), 2, "PixelSpacing")
    slope, intercept = _rescale(rescale)
    return _Slice(
        position=_floats(position.ImagePositionPatient, 3, "ImagePositionPatient"),
        orientation=_floats(orientation.ImageOrientationPatient, 6, "ImageOrientationPatient"),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slope=slope,
        intercept=intercept,
        pixels=pixels,
        dataset=ds,
    )


def _frames_of(ds: Dataset, frames: int) -> list[_Slice]:
    """The frames of an enhanced (multi-frame) image, from its functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        raise UnsupportedMultiFrameError(
            "multi-frame image without per-frame functional groups (positions) is not supported"
        )

    def group(index: int, name: str) -> Dataset | None:
        for source in (per_frame[index], shared[0] if shared else None):
            if source is not None and name in source and len(source[name].value):
                item: Dataset = source[name].value[0]
                return item
        return None

    decoded: list[npt.NDArray[np.generic]] = []
    decoding = threading.Lock()  # frames are read on several threads; decode the image once

    def frame_pixels(index: int) -> npt.NDArray[np.generic]:
        with decoding:
            if not decoded:
                decoded.append(_decode(ds))
        frame: npt.NDArray[np.generic] = decoded[0][index]
        return frame

    out = []
    for index in range(frames):
        position = group(index, "PlanePositionSequence")
        orientation = group(index, "PlaneOrientationSequence")
        measures = group(index, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise UnsupportedMultiFrameError(
                f"frame {index + 1} lacks plane position, orientation or pixel measures"
            )
        rescale = group(index, "PixelValueTransformationSequence")
        out.append(
            _plane(ds, position, orientation, measures, rescale, partial(frame_pixels, index))
        )
    return out


def _rescale(source: Dataset | None) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent or empty.

    A zero, non-numeric or (for 32-bit floats) infinite value would silently turn every voxel
    into one value or into NaN; such a series is refused instead.
    """
    values = []
    for name, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = getattr(source, name, None) if source is not None else None
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            values.append(default)
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError) as error:
            raise PixelDataError(f"{name} is not a number") from error
        if abs(value) > _FLOAT32_MAX or math.isnan(value) or (name == "RescaleSlope" and not value):
            raise PixelDataError(f"{name} {value!r} cannot map stored values to CT numbers")
        values.append(value)
    return values[0], values[1]


def _decode(ds: Dataset) -> npt.NDArray[np.generic]:
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise PixelDataError("colour images are not supported; a greyscale series is required")
    syntax = (
        ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.get("file_meta", {}) else None
    )
    try:
        # pydicom's decoding, as ``ds.pixel_array`` does it, without its writeable copy (the
        # builder only reads the values) nor its cache on ``ds`` (a second copy of the series).
        pixels: npt.NDArray[np.generic] = pixel_array(ds, view_only=True)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as error:
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise PixelDataError(
            f"cannot decode pixel data (transfer syntax {name}): {error}"
        ) from error
    return pixels


def _stack(slices: list[_Slice], images: list[Dataset], budget: VolumeBudget) -> Volume:
    first = slices[0]
    _check_plane(first)  # the others are compared with it below
    for item in slices[1:]:
        if np.max(np.abs(item.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise MixedOrientationError(
                "slices have different orientations (ImageOrientationPatient); "
                "the series mixes planes or was reformatted"
            )
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise InconsistentSizeError(
                f"slices differ in size: {first.rows}x{first.columns} and "
                f"{item.rows}x{item.columns}"
            )
        if not np.allclose(item.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise InconsistentSizeError(
                f"slices differ in pixel spacing: {first.pixel_spacing} and {item.pixel_spacing} mm"
            )
    row_direction = first.orientation[:3] / np.linalg.norm(first.orientation[:3])
    column_direction = first.orientation[3:] / np.linalg.norm(first.orientation[3:])
    normal = np.cross(row_direction, column_direction)
    distances = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)
    duplicates = int(np.sum(gaps < 1e-3))
    if duplicates:
        raise DuplicatePositionError(
            f"{duplicates} slice(s) share a position with another slice "
            "(several acquisitions or echoes in one series?)"
        )
    spacing = float(np.median(gaps))
    gap_problem = spacing_problem([spacing], "the slice spacing", 1)
    if gap_problem:
        raise InconsistentSizeError(gap_problem)
    if np.max(gaps) > GAP_FACTOR * spacing:
        where = int(np.argmax(gaps))
        missing = round(float(gaps[where]) / spacing) - 1
        raise MissingSliceError(
            f"about {missing} slice(s) missing between positions {distances[where]:.2f} and "
            f"{distances[where + 1]:.2f} mm along the normal (usual spacing {spacing:.3g} mm)"
        )
    deviation = float(np.max(np.abs(gaps - spacing)) / spacing)
    if deviation > SPACING_TOLERANCE:
        raise NonUniformSpacingError(
            f"slice spacing varies by {deviation:.0%} (more than {SPACING_TOLERANCE:.0%}); "
            "a regular grid is required"
        )
    _check_tilt(slices, normal, spacing, min(first.pixel_spacing))
    too_large = budget.problem(
        (len(slices), first.rows, first.columns),
        (spacing, first.pixel_spacing[0], first.pixel_spacing[1]),
    )
    if too_large:
        raise VolumeTooLargeError(too_large)
    # Decode one slice before allocating: a header may declare any size (65535 x 65535) over
    # a few bytes of pixel data, and allocating that first kills the worker with MemoryError.
    first_pixels = first.pixels()
    array = np.empty((len(slices), first.rows, first.columns), dtype=np.float32)

    def fill(index: int) -> None:
        item = slices[index]
        _write_plane(array[index], first_pixels if item is first else item.pixels(), item)

    _each_in_order(fill, len(slices))
    datasets = [s.dataset for s in slices] if len(images) == len(slices) else list(images)
    return Volume(
        array=array,
        spacing=(spacing, first.pixel_spacing[0], first.pixel_spacing[1]),
        origin=_vector(slices[0].position),
        row_direction=_vector(row_direction),
        column_direction=_vector(column_direction),
        series_uid=str(getattr(images[0], "SeriesInstanceUID", "")),
        frame_of_reference_uid=str(getattr(images[0], "FrameOfReferenceUID", "")),
        datasets=datasets,
        modality=str(getattr(images[0], "Modality", "")),
    )


def _write_plane(
    plane: npt.NDArray[np.float32], pixels: npt.NDArray[np.generic], item: _Slice
) -> None:
    """Check one slice's decoded values and write them, rescaled, into its plane of the volume."""
    if pixels.shape != plane.shape:
        raise PixelDataError(f"a frame decodes to {pixels.shape}, not Rows x Columns")
    if pixels.size and _may_exceed_float32(pixels.dtype, item):
        extreme = max(abs(float(pixels.min())), abs(float(pixels.max())))
        if extreme * abs(item.slope) + abs(item.intercept) > _FLOAT32_MAX:
            raise PixelDataError("rescaled pixel values exceed the range of 32-bit floats")
    # In 32-bit floats, as a cast, a multiply and an add would do (each value cast to float32
    # first), in as few passes as the rescale needs and without temporary arrays.
    if item.slope != 1.0:
        np.multiply(pixels, np.float32(item.slope), out=plane, dtype=np.float32, casting="unsafe")
        if item.intercept != 0.0:
            plane += np.float32(item.intercept)
    elif item.intercept != 0.0:
        np.add(pixels, np.float32(item.intercept), out=plane, dtype=np.float32, casting="unsafe")
    else:
        plane[...] = pixels


def _may_exceed_float32(dtype: np.dtype[np.generic], item: _Slice) -> bool:
    """False where no value of an integer ``dtype`` can leave float32's range once rescaled,
    so that its minimum and maximum need not be computed (two passes over each slice)."""
    if dtype.kind not in "iu":
        return True
    info = np.iinfo(dtype)  # type: ignore[type-var]
    extreme = max(abs(float(info.min)), abs(float(info.max)))
    return extreme * abs(item.slope) + abs(item.intercept) > _FLOAT32_MAX


def _each_in_order(task: Callable[[int], None], count: int) -> None:
    """``task(0)`` ... ``task(count - 1)`` on a few threads (decoding and numpy's loops release
    the GIL), raising what the lowest failing index raised, as a loop would; the rest is
    cancelled."""
    threads = min(_FILL_THREADS, count)
    if threads <= 1:
        for index in range(count):
            task(index)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="volume-fill")
    try:
        for _ in pool.map(task, range(count)):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_plane(item: _Slice) -> None:
    """Refuse geometry no grid can be built on: spacing <= 0 or absurd, orientation not two
    unit vectors at right angles (both would pass every later check and give a nonsense
    volume, or overflow in resampling)."""
    problem = spacing_problem(item.pixel_spacing) or orientation_problem(
        [float(v) for v in item.orientation]
    )
    if problem:
        raise InconsistentSizeError(problem)


def _check_tilt(
    slices: Sequence[_Slice], normal: npt.NDArray[np.float64], spacing: float, pixel: float
) -> None:
    """Refuse stacks whose slice origins drift within the image plane (a sheared grid)."""
    offsets = np.array([s.position - slices[0].position for s in slices])
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > 0.5 * pixel:
        span = float((slices[-1].position - slices[0].position) @ normal)
        angle = float(np.degrees(np.arctan2(drift, abs(span)))) if span else 90.0
        raise GantryTiltError(
            f"slices are sheared by about {angle:.1f} degrees (gantry tilt): their origins drift "
            f"{drift:.1f} mm within the image plane; resample the series without tilt first"
        )


def _vector(values: npt.NDArray[np.float64]) -> Vector:
    return (float(values[0]), float(values[1]), float(values[2]))
