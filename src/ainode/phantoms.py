"""Synthetic CT phantoms with a known truth, written as real DICOM series.

Used by the demo model's training script, the sample data, the tests and the benchmarks, so the
truth a test compares against is produced by exactly the same code that made the images.

The specification (issue "model cascades", shared by generator, training and tests): CT volumes
of 64-512 voxels in-plane and 20-300 slices, spacing 0.6-2.0 mm in-plane and 0.6-5 mm between
slices; background 0 HU with Gaussian noise of sd 20-40 HU; one to three spheres (label 1
"sphere", radius 8-25 mm) and zero to two axis-aligned boxes (label 2 "box", half-sides
6-20 mm), each of 120-300 HU, none touching another. Spheres and boxes overlap in CT number,
so a model has to tell them apart by shape. Grids smaller than the specification (tests use
some) get shapes shrunk to fit.

Voxel convention everywhere in the node: arrays are indexed ``[slice, row, column]`` with slices
in the order of their position along the slice normal (``ImageOrientationPatient`` row x column).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SPHERE, BOX = 1, 2
# The label a phantom's truth uses for each kind of object.
LABELS: dict[int, str] = {SPHERE: "sphere", BOX: "box"}

# The specification's ranges: (low, high).
IN_PLANE_VOXELS = (64, 512)
SLICES = (20, 300)
IN_PLANE_SPACING_MM = (0.6, 2.0)
SLICE_SPACING_MM = (0.6, 5.0)
NOISE_SD_HU = (20.0, 40.0)
SPHERE_COUNT = (1, 3)
BOX_COUNT = (0, 2)
SPHERE_RADIUS_MM = (8.0, 25.0)
BOX_HALF_SIDE_MM = (6.0, 20.0)
OBJECT_HU = (120.0, 300.0)
BACKGROUND_HU = 0.0
GAP_MM = 3.0  # the least distance between two objects' bounding boxes, and to the grid's edge


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

    @property
    def extent_mm(self) -> npt.NDArray[np.float64]:
        """Length of the grid along (slice, row, column), voxel centre to voxel centre."""
        return (np.asarray(self.shape, dtype=np.float64) - 1) * np.asarray(
            self.spacing, dtype=np.float64
        )

    def position(self, slice_index: int) -> npt.NDArray[np.float64]:
        """ImagePositionPatient of a slice (centre of its first voxel)."""
        return np.asarray(self.origin) + slice_index * self.spacing[0] * self.normal


def random_geometry(
    rng: np.random.Generator,
    *,
    in_plane: tuple[int, int] = IN_PLANE_VOXELS,
    slices: tuple[int, int] = SLICES,
    in_plane_spacing: tuple[float, float] = IN_PLANE_SPACING_MM,
    slice_spacing: tuple[float, float] = SLICE_SPACING_MM,
) -> Geometry:
    """A grid drawn from the specification's ranges (narrower ranges may be asked for)."""
    rows = int(rng.integers(in_plane[0], in_plane[1] + 1))
    columns = rows if rng.random() < 0.7 else int(rng.integers(in_plane[0], in_plane[1] + 1))
    pixel = float(rng.uniform(*in_plane_spacing))
    column_pixel = pixel if rng.random() < 0.8 else float(rng.uniform(*in_plane_spacing))
    return Geometry(
        shape=(int(rng.integers(slices[0], slices[1] + 1)), rows, columns),
        spacing=(float(rng.uniform(*slice_spacing)), pixel, column_pixel),
    )


@dataclass(frozen=True)
class Sphere:
    """A ball; ``centre_mm`` is (slice, row, column) millimetres from the first voxel's centre."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    hu: float
    label: int = SPHERE

    @property
    def half_extent_mm(self) -> tuple[float, float, float]:
        return (self.radius_mm,) * 3

    def mask(
        self, zz: npt.NDArray[np.float64], yy: npt.NDArray[np.float64], xx: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.bool_]:
        c = self.centre_mm
        return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= self.radius_mm**2


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (grid axes); ``centre_mm`` as for :class:`Sphere`."""

    centre_mm: tuple[float, float, float]
    half_sides_mm: tuple[float, float, float]
    hu: float
    label: int = BOX

    @property
    def half_extent_mm(self) -> tuple[float, float, float]:
        return self.half_sides_mm

    def mask(
        self, zz: npt.NDArray[np.float64], yy: npt.NDArray[np.float64], xx: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.bool_]:
        c, h = self.centre_mm, self.half_sides_mm
        return (abs(zz - c[0]) <= h[0]) & (abs(yy - c[1]) <= h[1]) & (abs(xx - c[2]) <= h[2])


Shape = Sphere | Box


def centre_voxel(shape: Shape, geometry: Geometry) -> tuple[int, int, int]:
    """The (slice, row, column) index nearest to an object's centre."""
    index = np.rint(np.asarray(shape.centre_mm) / np.asarray(geometry.spacing)).astype(int)
    return int(index[0]), int(index[1]), int(index[2])


def _apart(a: Shape, b: Shape) -> bool:
    """Bounding boxes at least GAP_MM apart along some axis: the objects do not touch."""
    return any(
        abs(ca - cb) >= ha + hb + GAP_MM
        for ca, cb, ha, hb in zip(
            a.centre_mm, b.centre_mm, a.half_extent_mm, b.half_extent_mm, strict=True
        )
    )


def random_shapes(
    geometry: Geometry, rng: np.random.Generator, *, attempts: int = 200
) -> list[Shape]:
    """One to three spheres and zero to two boxes, inside the grid and apart from each other.

    Sizes are drawn from the specification's ranges, capped so that an object fits the grid;
    an object for which no free place is found in ``attempts`` draws is left out (the first
    sphere always has room).
    """
    room = geometry.extent_mm / 2 - GAP_MM  # the largest half-extent that fits, per axis
    wanted: list[int] = [SPHERE] * int(rng.integers(SPHERE_COUNT[0], SPHERE_COUNT[1] + 1))
    wanted += [BOX] * int(rng.integers(BOX_COUNT[0], BOX_COUNT[1] + 1))
    shapes: list[Shape] = []
    for label in wanted:
        for _ in range(attempts):
            hu = float(rng.uniform(*OBJECT_HU))
            if label == SPHERE:
                half = np.full(3, min(float(rng.uniform(*SPHERE_RADIUS_MM)), float(room.min())))
            else:
                half = np.minimum(rng.uniform(*BOX_HALF_SIDE_MM, size=3), room)
            if half.min() <= 0:
                break  # the grid is too small for anything
            low, high = half + GAP_MM, geometry.extent_mm - half - GAP_MM
            centre = tuple(float(v) for v in rng.uniform(low, np.maximum(low, high)))
            shape: Shape = (
                Sphere(centre, float(half[0]), hu)  # type: ignore[arg-type]
                if label == SPHERE
                else Box(centre, tuple(float(v) for v in half), hu)  # type: ignore[arg-type]
            )
            if all(_apart(shape, other) for other in shapes):
                shapes.append(shape)
                break
    return shapes


_REQUIRE_ATTEMPTS = 100


@dataclass
class Phantom:
    """An image volume, its truth label map, the objects in it, and the geometry they share."""

    image: npt.NDArray[np.int16]  # HU, [slice, row, column]
    labels: npt.NDArray[np.uint8]
    geometry: Geometry
    shapes: list[Shape] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABELS))


def make_phantom(
    geometry: Geometry | None = None,
    *,
    seed: int = 0,
    noise_hu: float | None = None,
    shapes: Sequence[Shape] | None = None,
    require: Collection[int] = (),
) -> Phantom:
    """A phantom on ``geometry``: random objects from ``seed``, or the ``shapes`` given.

    ``noise_hu`` is the noise's standard deviation (default: drawn from 20-40 HU). ``require``
    lists labels the random objects must include (e.g. ``(SPHERE, BOX)`` for a test that scores
    both): objects are drawn again from the same generator until they do, so a seed whose first
    draw already has them gives the same phantom as without ``require``.
    """
    geometry = geometry or Geometry()
    rng = np.random.default_rng(seed)
    if shapes is not None:
        placed = list(shapes)
    else:
        for _ in range(_REQUIRE_ATTEMPTS):
            placed = random_shapes(geometry, rng)
            if set(require) <= {shape.label for shape in placed}:
                break
        else:
            raise ValueError(
                f"no objects with labels {sorted(require)} fit a {geometry.shape} grid"
            )
    sd = float(rng.uniform(*NOISE_SD_HU)) if noise_hu is None else noise_hu
    nz, ny, nx = geometry.shape
    zz, yy, xx = (
        np.asarray((np.arange(n) * s).reshape(shape), dtype=np.float64)
        for n, s, shape in zip(
            geometry.shape, geometry.spacing, ((nz, 1, 1), (1, ny, 1), (1, 1, nx)), strict=True
        )
    )
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    image = np.full(geometry.shape, BACKGROUND_HU, dtype=np.float32)
    for shape in placed:
        inside = np.broadcast_to(shape.mask(zz, yy, xx), geometry.shape)
        labels[inside] = shape.label
        image[inside] = shape.hu
    image += rng.normal(0.0, sd, size=geometry.shape).astype(np.float32)
    return Phantom(
        image=np.round(image).astype(np.int16), labels=labels, geometry=geometry, shapes=placed
    )


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
    study_description: str = "Phantom study"
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
        ds.StudyDescription = ids.study_description
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
