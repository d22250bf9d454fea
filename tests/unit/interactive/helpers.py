"""Helpers of the interactive service's tests (phantom series, scoring, local servers)."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests
import uvicorn
from ainode_worker.interactive.volumes import volume_from_datasets
from ainode_worker.volume import Volume
from fastapi import FastAPI
from nodeharness import free_port
from pydicom import Dataset
from scipy import ndimage as ndi

from ainode.phantoms import (
    BOX_HALF_SIDE_MM,
    GAP_MM,
    OBJECT_HU,
    SPHERE_RADIUS_MM,
    Box,
    Geometry,
    Phantom,
    SeriesIds,
    Shape,
    Sphere,
    make_phantom,
    phantom_datasets,
)


@dataclass
class PhantomSeries:
    phantom: Phantom
    ids: SeriesIds
    datasets: list[Dataset]  # the DICOM files, pixels included
    volume: Volume

    @property
    def uid(self) -> str:
        return self.ids.series_uid


def sphere_and_box(geometry: Geometry, seed: int) -> list[Shape]:
    """One sphere (label 1) and one box (label 2) side by side along the columns.

    The specification's objects, as large as the grid allows, at CT numbers and offsets drawn
    from ``seed``: each label is then one object, so a click's result can be scored against it.
    """
    rng = np.random.default_rng(seed)
    extent = geometry.extent_mm
    usable = extent[2] - 3 * GAP_MM  # both objects side by side, gaps before, between, after
    room = extent / 2 - GAP_MM
    radius = min(SPHERE_RADIUS_MM[1], 0.55 * usable / 2, room[0], room[1])
    half = (
        min(BOX_HALF_SIDE_MM[1], 0.8 * room[0]),
        min(BOX_HALF_SIDE_MM[1], 0.8 * room[1]),
        min(BOX_HALF_SIDE_MM[1], 0.45 * usable / 2),
    )

    def centre(half_extent: tuple[float, ...], column: float) -> tuple[float, float, float]:
        slack = [max(0.0, r - h) for r, h in zip(room[:2], half_extent[:2], strict=True)]
        offsets = [float(rng.uniform(-s / 2, s / 2)) for s in slack]
        return (extent[0] / 2 + offsets[0], extent[1] / 2 + offsets[1], column)

    sphere = Sphere(
        centre((radius, radius), GAP_MM + 0.55 * usable / 2),
        float(radius),
        float(rng.uniform(*OBJECT_HU)),
    )
    box = Box(
        centre(half, extent[2] - GAP_MM - 0.45 * usable / 2),
        (float(half[0]), float(half[1]), float(half[2])),
        float(rng.uniform(*OBJECT_HU)),
    )
    return [sphere, box]


def phantom_series(
    geometry: Geometry | None = None,
    *,
    seed: int = 0,
    shapes: list[Shape] | None = None,
    noise_hu: float | None = None,
) -> PhantomSeries:
    """A phantom series holding :func:`sphere_and_box` unless ``shapes`` are given."""
    geometry = geometry or Geometry()
    placed = shapes if shapes is not None else sphere_and_box(geometry, seed)
    phantom = make_phantom(geometry, seed=seed, shapes=placed, noise_hu=noise_hu)
    ids = SeriesIds()
    datasets = list(phantom_datasets(phantom, ids))
    return PhantomSeries(phantom, ids, datasets, volume_from_datasets(datasets))


def object_click(phantom: Phantom, label: int) -> tuple[int, int, int]:
    """(x, y, z) of the voxel of an object farthest from its border: where a user clicks."""
    depth = ndi.distance_transform_edt(phantom.labels == label, sampling=phantom.geometry.spacing)
    z, y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(x), int(y), int(z)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@dataclass
class OrthancServer:
    url: str
    auth: tuple[str, str]

    def upload(self, series: PhantomSeries) -> str:
        """Store a phantom series; return its Orthanc series id."""
        parent = ""
        for ds in series.datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            answer = requests.post(
                f"{self.url}/instances", data=buffer.getvalue(), auth=self.auth, timeout=10
            )
            answer.raise_for_status()
            parent = answer.json()["ParentSeries"]
        return parent


class ServedApp:
    """A FastAPI app served by uvicorn on a free port in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# Fractions of the way from an object's centre to its last voxel along a ray; ``EDGE`` is the
# voxel one step inside the last one ("one voxel inside the edge").
EDGE = 1.0
DEPTHS = (0.0, 0.3, 0.6, 0.8, EDGE)
# Rays (slice, row, column) along which clicks move from the centre: axes and diagonals.
RAYS = (
    (0, 0, 1),
    (0, -1, 0),
    (1, 0, 0),
    (-1, 0, 0),
    (0, 1, 1),
    (1, -1, 1),
    (-1, 1, -1),
)


def clicks_at_depths(
    truth: np.ndarray,
    centre: tuple[int, int, int],
    rays: tuple[tuple[int, int, int], ...] = RAYS,
    depths: tuple[float, ...] = DEPTHS,
) -> list[tuple[tuple[int, int, int], str]]:
    """(x, y, z) clicks inside ``truth`` from ``centre`` towards its edge along each ray.

    Along a ray (whole voxel steps, diagonals included) the last step still inside ``truth`` is
    found; a click at depth ``f`` lies ``f`` of the way to the step before it, so ``EDGE`` is
    the voxel whose next neighbour along the ray is the object's outermost voxel.
    """
    clicks: list[tuple[tuple[int, int, int], str]] = []
    for ray in rays:
        steps = 0
        while True:
            z, y, x = (c + (steps + 1) * r for c, r in zip(centre, ray, strict=True))
            inside = all(0 <= v < n for v, n in zip((z, y, x), truth.shape, strict=True))
            if not inside or not truth[z, y, x]:
                break
            steps += 1
        last = max(steps - 1, 0)
        for depth in depths:
            k = round(depth * last)
            z, y, x = (c + k * r for c, r in zip(centre, ray, strict=True))
            assert truth[z, y, x]
            clicks.append(((int(x), int(y), int(z)), f"ray {ray} depth {depth:g} ({k}/{steps})"))
    return clicks
