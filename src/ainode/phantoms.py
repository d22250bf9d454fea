"""Synthetic CT phantoms with a known truth, written as real DICOM series.

Used by the demo model's training script, the sample data, the tests and the benchmarks, so the
truth a test compares against is produced by exactly the same code that made the images.

Voxel convention everywhere in the node: arrays are indexed ``[slice, row, column]`` with slices
in the order of their position along the slice normal (``ImageOrientationPatient`` row x column).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# The label a phantom's truth uses for each structure, and its CT number.
LABELS: dict[int, str] = {1: "liver", 2: "kidney"}
_HU = {0: 40.0, 1: 160.0, 2: 260.0}


@dataclass(frozen=True)
class Geometry:
    """Where the voxel grid lies in patient space."""

    shape: tuple[int, int, int] = (48, 64, 64)  # slices, rows, columns
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8)  # slice, row, column (mm)
    origin: tuple[float, float, float] = (-25.0, -25.0, -60.0)  # first voxel centre (mm)
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    def position(self, slice_index: int) -> npt.NDArray[np.float64]:
        """ImagePositionPatient of a slice (centre of its first voxel)."""
        return np.asarray(self.origin) + slice_index * self.spacing[0] * self.normal


@dataclass
class Phantom:
    """An image volume, its truth label map, and the geometry they share."""

    image: npt.NDArray[np.int16]  # HU, [slice, row, column]
    labels: npt.NDArray[np.uint8]
    geometry: Geometry
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABELS))


def make_phantom(
    geometry: Geometry | None = None, *, seed: int = 0, noise_hu: float = 20.0
) -> Phantom:
    """Two ellipsoids of different density in a soft-tissue body, with Gaussian noise.

    Sizes are in millimetres, so the phantom looks alike whatever the grid's spacing.
    """
    geometry = geometry or Geometry()
    rng = np.random.default_rng(seed)
    nz, ny, nx = geometry.shape
    zz, yy, xx = np.meshgrid(
        np.arange(nz) * geometry.spacing[0],
        np.arange(ny) * geometry.spacing[1],
        np.arange(nx) * geometry.spacing[2],
        indexing="ij",
    )
    extent = np.array(
        [nz * geometry.spacing[0], ny * geometry.spacing[1], nx * geometry.spacing[2]]
    )
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    for label in sorted(LABELS):
        centre = extent * rng.uniform(0.3, 0.7, size=3)
        radii = extent * rng.uniform(0.12, 0.22, size=3)
        inside = (
            ((zz - centre[0]) / radii[0]) ** 2
            + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2
        ) <= 1.0
        labels[inside & (labels == 0)] = label
    hu_of_label = np.array([_HU[label] for label in sorted(_HU)], dtype=np.float64)
    image = hu_of_label[labels]
    image += rng.normal(0.0, noise_hu, size=image.shape)
    return Phantom(image=np.round(image).astype(np.int16), labels=labels, geometry=geometry)


@dataclass(frozen=True)
class SeriesIds:
    """The identifiers a written phantom series carries (fixed, so tests can find it)."""

    patient_id: str = "PHANTOM-0001"
    patient_name: str = "Phantom^Test"
    patient_birth_date: str = "19700101"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    accession_number: str = "ACC0001"
    series_number: int = 1
    series_description: str = "Phantom CT"
    body_part: str = "ABDOMEN"


def phantom_datasets(
    phantom: Phantom, ids: SeriesIds | None = None, *, modality: str = "CT"
) -> Iterator[Dataset]:
    """One CT Image Storage dataset per slice, in position order."""
    ids = ids or SeriesIds()
    geometry = phantom.geometry
    rescale_intercept = -1024.0
    for index in range(geometry.shape[0]):
        pixels = (phantom.image[index].astype(np.int32) - int(rescale_intercept)).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.PatientName = ids.patient_name
        ds.PatientID = ids.patient_id
        ds.PatientBirthDate = ids.patient_birth_date
        ds.PatientSex = "O"
        ds.StudyInstanceUID = ids.study_uid
        ds.SeriesInstanceUID = ids.series_uid
        ds.FrameOfReferenceUID = ids.frame_of_reference_uid
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ids.accession_number
        ds.ReferringPhysicianName = ""
        ds.Modality = modality
        ds.Manufacturer = "AINODE phantoms"
        ds.BodyPartExamined = ids.body_part
        ds.SeriesNumber = ids.series_number
        ds.SeriesDescription = ids.series_description
        ds.InstanceNumber = index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in geometry.position(index)]
        ds.ImageOrientationPatient = [
            _ds(v) for v in (*geometry.row_direction, *geometry.column_direction)
        ]
        ds.PixelSpacing = [_ds(geometry.spacing[1]), _ds(geometry.spacing[2])]
        ds.SliceThickness = _ds(geometry.spacing[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = geometry.shape[1], geometry.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = _ds(rescale_intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.PixelData = pixels.tobytes()
        yield ds


def _ds(value: float) -> str:
    """A Decimal String value that fits DICOM's 16 characters."""
    text = f"{float(value):.6g}"
    return "0" if text == "-0" else text


def write_series(
    phantom: Phantom,
    folder: Path,
    ids: SeriesIds | None = None,
    *,
    order: Sequence[int] | None = None,
) -> list[Path]:
    """Write the phantom as one file per slice; ``order`` permutes the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets = list(phantom_datasets(phantom, ids))
    order = list(order) if order is not None else list(range(len(datasets)))
    paths = []
    for file_index, slice_index in enumerate(order):
        path = folder / f"IM{file_index:05d}.dcm"
        datasets[slice_index].save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
