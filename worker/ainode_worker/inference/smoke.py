"""Prove a registry entry loads and runs: once, on a small synthetic volume, as a job would.

``ainode models add`` and ``ainode models check`` call it. The volume is an ``ainode.phantoms``
series read back through the worker's own DICOM-to-volume path, so the model sees what a job
would give it; the result is not judged (an untrained or unrelated model may find nothing), only
that the model loaded, ran, and returned a label map on the input's grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets
from ainode.registry import Registry
from ainode.settings import Settings
from ainode_worker.inference.pipeline import cache_from_settings, run_pipeline
from ainode_worker.volume import volume_from_datasets

SMOKE_SHAPE = (24, 64, 64)


@dataclass(frozen=True)
class SmokeResult:
    model: str
    device: str
    seconds: float
    shape: tuple[int, ...]
    labels_found: list[int]

    def describe(self) -> str:
        found = ", ".join(map(str, self.labels_found)) or "none"
        return (
            f"{self.model} loaded and ran on {self.device} in {self.seconds:.1f} s "
            f"({'x'.join(map(str, self.shape))} synthetic volume; label values found: {found})"
        )


def smoke_run(registry: Registry, model_id: str, settings: Settings) -> SmokeResult:
    """Run ``model_id`` once; raises the inference errors a job would fail with."""
    spec = registry.get(model_id)
    phantom = make_phantom(Geometry(shape=SMOKE_SHAPE), seed=7)
    modality = spec.input.modality if spec.input.modality in {"CT", "MR"} else "CT"
    volume = volume_from_datasets(list(phantom_datasets(phantom, SeriesIds(), modality=modality)))
    volumes = {name: volume for name in spec.input.channels}
    cache = cache_from_settings(settings)
    started = time.perf_counter()
    result = run_pipeline(registry, spec.id, volumes, {}, cache=cache)
    seconds = time.perf_counter() - started
    if result.labels.shape != volume.shape:
        raise RuntimeError(
            f"{spec.id} returned a {result.labels.shape} label map for a {volume.shape} volume"
        )
    devices = sorted({device.type for _, device in cache.loaded()}) or ["cpu"]
    cache.clear()
    return SmokeResult(
        model=spec.id,
        device="/".join(devices),
        seconds=seconds,
        shape=tuple(int(n) for n in volume.shape),
        labels_found=[int(v) for v in np.unique(result.labels) if v],
    )
