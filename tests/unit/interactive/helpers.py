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

from ainode.phantoms import Geometry, Phantom, SeriesIds, make_phantom, phantom_datasets


@dataclass
class PhantomSeries:
    phantom: Phantom
    ids: SeriesIds
    datasets: list[Dataset]  # the DICOM files, pixels included
    volume: Volume

    @property
    def uid(self) -> str:
        return self.ids.series_uid


def phantom_series(geometry: Geometry | None = None, *, seed: int = 0) -> PhantomSeries:
    phantom = make_phantom(geometry, seed=seed)
    ids = SeriesIds()
    datasets = list(phantom_datasets(phantom, ids))
    return PhantomSeries(phantom, ids, datasets, volume_from_datasets(datasets))


def organ_click(phantom: Phantom, label: int) -> tuple[int, int, int]:
    """(x, y, z) of the voxel of an organ farthest from its border: a click a user would make."""
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
