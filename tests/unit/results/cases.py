"""Phantom series for the result writers' tests: axial and oblique, written in shuffled order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from ainode_worker.results import Provenance
from dicom_readers import sort_by_position
from pydicom import Dataset

from ainode.phantoms import BOX, SPHERE, Geometry, Phantom, SeriesIds, make_phantom, write_series
from ainode.registry import Code, LabelSpec

ANATOMY = Code(value="123037004", meaning="Anatomical Structure")
OBJECT = Code(value="260787004", meaning="Physical object")
LABELS = [
    LabelSpec(
        value=1,
        name="sphere",
        category=OBJECT,
        type=Code(value="122485", scheme="DCM", meaning="Sphere"),
        anatomic_region=Code(value="818981001", meaning="Abdomen"),
        color=(230, 159, 0),
    ),
    LabelSpec(
        value=2, name="box", category=OBJECT, type=Code(value="706342009", meaning="Phantom")
    ),
    # Described by the model but absent from every phantom: must be left out of the outputs.
    LabelSpec(
        value=3,
        name="marker",
        category=OBJECT,
        type=Code(value="262301009", meaning="Opaque Marker"),
    ),
]
PROVENANCE = Provenance(
    model_id="abdomen-v1",
    model_name="Abdomen nnU-Net",
    model_version="1.2.0",
    rule="ct-abdomen",
    pipeline="abdomen",
)


@dataclass
class Case:
    """A phantom written to disk in a shuffled order, read back and sorted like the engine does."""

    phantom: Phantom
    sources: list[Dataset]
    labels: list[LabelSpec]
    provenance: Provenance

    @property
    def truth(self) -> np.ndarray:
        return self.phantom.labels


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.asarray(np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx, float)


def oblique_geometry() -> Geometry:
    """Rotated 30 degrees about an axis off every patient axis, with anisotropic voxels."""
    r = rotation((1.0, 2.0, 0.5), 30.0)
    row, col = r[:, 0], r[:, 1]  # images of the x and y axes
    return Geometry(
        shape=(24, 48, 48),
        spacing=(3.0, 0.9, 0.7),
        origin=(-12.0, 30.0, -80.0),
        row_direction=(float(row[0]), float(row[1]), float(row[2])),
        column_direction=(float(col[0]), float(col[1]), float(col[2])),
    )


def ge_gap_geometry() -> Geometry:
    """A tilted MR-like grid 7.07 mm apart: 5 mm slices with a 2.07 mm gap between them."""
    r = rotation((1.0, 0.0, 0.0), 15.0)
    row, col = r[:, 0], r[:, 1]
    return Geometry(
        shape=(20, 48, 48),
        spacing=(7.07, 1.0, 1.0),
        origin=(-20.0, -20.0, -40.0),
        row_direction=(float(row[0]), float(row[1]), float(row[2])),
        column_direction=(float(col[0]), float(col[1]), float(col[2])),
    )


def make_case(
    folder: Path,
    geometry: Geometry,
    *,
    seed: int = 0,
    shuffle: bool = True,
    header: dict[str, object] | None = None,
) -> Case:
    """A phantom with a sphere and a box (labels 1 and 2), written and read back.

    ``header`` sets attributes on every slice before writing, e.g. an older GE scanner's
    SpacingBetweenSlices that holds the gap between slices rather than their distance.
    """
    phantom = make_phantom(geometry, seed=seed, require=(SPHERE, BOX))
    n = geometry.shape[0]
    order = np.random.default_rng(seed).permutation(n).tolist() if shuffle else None
    paths = write_series(phantom, folder, SeriesIds(), order=order)
    for path in paths if header else []:
        ds = pydicom.dcmread(path)
        for keyword, value in (header or {}).items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    sources = sort_by_position([pydicom.dcmread(p) for p in paths])
    return Case(phantom=phantom, sources=sources, labels=list(LABELS), provenance=PROVENANCE)
