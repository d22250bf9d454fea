"""DICOM series -> 3D volumes on a known patient-space grid."""

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
    VolumeError,
    VolumeTooLargeError,
)
from ainode_worker.volume.model import Volume
from ainode_worker.volume.resample import resample_to
from ainode_worker.volume.series import volume_from_datasets

__all__ = [
    "DuplicatePositionError",
    "GantryTiltError",
    "InconsistentSizeError",
    "LocalizerError",
    "MissingSliceError",
    "MixedOrientationError",
    "MixedSeriesError",
    "NoImageError",
    "NonUniformSpacingError",
    "PixelDataError",
    "SingleFrameError",
    "UnsupportedMultiFrameError",
    "Volume",
    "VolumeError",
    "VolumeTooLargeError",
    "resample_to",
    "volume_from_datasets",
]
