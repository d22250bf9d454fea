"""What makes a series an image a model may run on, checked before any work: one place for the
plugin (on the tags Orthanc holds, before a job is queued) and the worker (on the files, before
any voxel is allocated).

Every check answers ``None`` or a one-line reason without patient data. Values come from
hostile senders: spacing may be ``inf``, ``1e308`` or NaN, orientation NaN, a SEG may call
itself CT, a header may declare a volume no machine can hold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

# SOP classes (and the families under them) that carry no image to segment: results, plans,
# documents, states, waveforms. Modality is free text a sender may get wrong; the SOP class
# says what the object is.
_NON_IMAGE_SOP_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.66", "raw data, registration or segmentation"),
    ("1.2.840.10008.5.1.4.1.1.88", "structured report or key object selection"),
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RT dose"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RT structure set"),
    ("1.2.840.10008.5.1.4.1.1.481.4", "RT treatment record"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RT plan"),
    ("1.2.840.10008.5.1.4.1.1.481.6", "RT treatment record"),
    ("1.2.840.10008.5.1.4.1.1.481.7", "RT treatment record"),
    ("1.2.840.10008.5.1.4.1.1.481.8", "RT plan"),
    ("1.2.840.10008.5.1.4.1.1.481.9", "RT treatment record"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.9", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.67", "real world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68", "surface"),
    ("1.2.840.10008.5.1.4.1.1.82", "measurement"),
    ("1.2.840.10008.5.1.4.1.1.90", "content assessment"),
    ("1.2.840.10008.5.1.4.1.1.91", "microscopy bulk annotations"),
)

# Bits Allocated a greyscale image of these modalities may have (their IODs); others: any of
# DEFAULT_BITS. 1 (bitmaps: a SEG's) and 64 (double floats) are never a scanner's image.
_BITS_BY_MODALITY: dict[str, frozenset[int]] = {
    "CT": frozenset({16}),
    "MR": frozenset({8, 16}),
}
DEFAULT_BITS = frozenset({8, 16, 32})

MAX_SPACING_MM = 1000.0  # a pixel or slice gap beyond a metre is no patient's image
MAX_POSITION_MM = 1e7
ORTHONORMAL_TOLERANCE = 0.01
BUDGET_GRID_MM = 1.0  # the finest grid a model resamples a series to, for the size budget
BYTES_PER_VOXEL = 16  # float32 volume, its resampled copy and per-class scores, estimated


def non_image_sop_class(sop_class_uid: str) -> str | None:
    """What the object is, when its SOP class is not an image to segment; else None."""
    uid = sop_class_uid.strip()
    for prefix, what in _NON_IMAGE_SOP_CLASSES:
        if uid == prefix or uid.startswith(prefix + "."):
            return what
    return None


def sop_class_problem(sop_class_uid: str) -> str | None:
    what = non_image_sop_class(sop_class_uid)
    if what is None:
        return None
    return f"SOP Class {sop_class_uid.strip()} is a {what}, not an image; never run by a model"


def pixel_format_problem(modality: str, bits_allocated: object, samples: object = 1) -> str | None:
    """Why ``bits_allocated`` (and samples per pixel) cannot be ``modality``'s greyscale image."""
    try:
        if int(str(samples or 1)) != 1:
            return "colour images are not supported; a greyscale series is required"
        bits = int(str(bits_allocated))
    except ValueError:
        return f"BitsAllocated {str(bits_allocated)[:16]!r} is not a number"
    allowed = _BITS_BY_MODALITY.get(modality.strip().upper(), DEFAULT_BITS)
    if bits not in allowed:
        shown = modality.strip().upper()[:16] or "an image"
        return (
            f"BitsAllocated {bits} is not a valid pixel format for {shown} "
            f"(allowed: {', '.join(str(b) for b in sorted(allowed))})"
        )
    return None


def _numbers(values: Sequence[object], count: int, name: str) -> tuple[list[float], str | None]:
    try:
        numbers = [float(str(value)) for value in values]
    except ValueError:
        return [], f"{name} is not numeric"
    if len(numbers) != count:
        return [], f"{name} must have {count} values, has {len(numbers)}"
    return numbers, None


def spacing_problem(
    values: Sequence[object], name: str = "PixelSpacing", count: int = 2
) -> str | None:
    """Spacing must be finite, positive and at most :data:`MAX_SPACING_MM`."""
    numbers, problem = _numbers(values, count, name)
    if problem:
        return problem
    shown = [_short(n) for n in numbers]
    if not all(math.isfinite(n) for n in numbers):
        return f"{name} must be positive and finite, not {shown} mm"
    if min(numbers) <= 0:
        return f"{name} must be positive, not {shown} mm"
    if max(numbers) > MAX_SPACING_MM:
        return f"{name} {shown} mm is beyond {MAX_SPACING_MM:g} mm: not a patient image's spacing"
    return None


def orientation_problem(values: Sequence[object]) -> str | None:
    """ImageOrientationPatient must be two finite, orthogonal unit vectors."""
    numbers, problem = _numbers(values, 6, "ImageOrientationPatient")
    if problem:
        return problem
    shown = [_short(n) for n in numbers]
    if not all(math.isfinite(n) for n in numbers):
        return f"ImageOrientationPatient must be finite, not {shown}"
    row, column = numbers[:3], numbers[3:]
    norms = (math.sqrt(sum(v * v for v in row)), math.sqrt(sum(v * v for v in column)))
    dot = sum(r * c for r, c in zip(row, column, strict=True))
    if max(abs(n - 1.0) for n in norms) > ORTHONORMAL_TOLERANCE or abs(dot) > ORTHONORMAL_TOLERANCE:
        return f"ImageOrientationPatient is not two orthogonal unit vectors: {shown}"
    return None


def position_problem(values: Sequence[object]) -> str | None:
    numbers, problem = _numbers(values, 3, "ImagePositionPatient")
    if problem:
        return problem
    if not all(math.isfinite(n) and abs(n) <= MAX_POSITION_MM for n in numbers):
        return f"ImagePositionPatient must be finite, not {[_short(n) for n in numbers]}"
    return None


def _short(value: float) -> str:
    return f"{value:.6g}"


def machine_memory_bytes() -> int:
    """Physical memory of this machine (0 when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class VolumeBudget:
    """How large a volume one job may ask for, checked on the header before allocating.

    Both the stored voxels and the voxels of the series' extent on a :data:`BUDGET_GRID_MM`
    grid (what a model resampling to its own spacing would allocate: 12 slices of 64 x 64 with
    80 mm pixels 250 mm apart are 69 GiB there) must fit ``max_voxels``, and their estimated
    memory ``max_bytes``.
    """

    max_voxels: int
    max_bytes: int

    @classmethod
    def for_machine(cls, max_voxels: int, max_memory_gib: float | None = None) -> VolumeBudget:
        """``max_memory_gib`` None: half of this machine's memory (a job shares it)."""
        if max_memory_gib is not None:
            max_bytes = int(max_memory_gib * 2**30)
        else:
            max_bytes = machine_memory_bytes() // 2 or 8 * 2**30
        return cls(max_voxels=max_voxels, max_bytes=max_bytes)

    def problem(
        self, shape: tuple[int, int, int], spacing: tuple[float, float, float] | None
    ) -> str | None:
        """Why a (slices, rows, columns) volume with ``spacing`` (mm) is over the budget."""
        stored = float(shape[0]) * float(shape[1]) * float(shape[2])
        voxels, what = stored, f"{shape[0]} x {shape[1]} x {shape[2]} voxels"
        if spacing is not None:
            extent = [n * s for n, s in zip(shape, spacing, strict=True)]
            gridded = math.prod(max(1.0, e / BUDGET_GRID_MM) for e in extent)
            if gridded > voxels:
                voxels = gridded
                what = (
                    "a span of "
                    + " x ".join(_short(e) for e in extent)
                    + f" mm ({_short(gridded)} voxels at {BUDGET_GRID_MM:g} mm)"
                )
        if voxels > self.max_voxels:
            return (
                f"the series is too large: {what}, over the job budget of "
                f"{_short(self.max_voxels)} voxels (setting job_max_voxels)"
            )
        needed = voxels * BYTES_PER_VOXEL
        if needed > self.max_bytes:
            return (
                f"the series is too large: {what} need about {needed / 2**30:.3g} GiB, over the "
                f"job budget of {self.max_bytes / 2**30:.3g} GiB (setting job_max_memory_gib)"
            )
        return None
