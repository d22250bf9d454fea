"""Click latency of the interactive service per backend: first click cold and warm, next click.

Everything goes through the real service over HTTP (uvicorn on a free port, ``requests`` with
keep-alive), so a latency includes the request, the session, the mask's JSON encoding and the
answer. The three kinds of click, each reported as p50 and p95 (nearest-rank, n samples):

* **first cold**: a new session on a series nobody has open: the series is decoded from its
  DICOM datasets (held in memory, so Orthanc's transfer is not included) and the backend's
  per-volume features are computed (smoothed volume, SAM slice embeddings);
* **first warm**: a first click on another object in a session whose volume and features are
  ready (after ``reset``: the user starts the next object);
* **next**: the clicks so far plus one more on the same object, here a negative click inside
  the object on the slice of the first click: region growing cuts the region again, SAM
  decodes every slice again (the costly follow-ups).

First and next clicks go to the two largest objects of the series (the slowest to grow and to
cut), alternately.

Region growing runs on a 200x512x512 CT phantom (0.75 mm pixels, 1.5 mm slices; two spheres
and two boxes of 160-280 HU, the largest of the specification's maximum size, noise 30 HU);
goal: next click p50 under 150 ms on a CPU. SAM 2 and SAM ONNX run the reduced random-weight
models of ``scripts/build_test_sam_models.py`` on a smaller series: their masks are
meaningless but their cost per encoded and decoded slice is real.

Usage: ``python bench/bench_interactive.py [--quick] [--models regiongrow,sam2,sam-onnx]
[--threads 1]``; ``--quick`` (30-70 s on two busy cores) takes fewer samples, a
32x128x128 series and 256-px models for SAM.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
import uvicorn
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig, load_models_file
from ainode_worker.interactive.volumes import volume_from_datasets
from ainode_worker.volume import Volume
from pydicom import Dataset

from ainode.bench import record
from ainode.phantoms import (
    Box,
    Geometry,
    Phantom,
    SeriesIds,
    Shape,
    Sphere,
    make_phantom,
    phantom_datasets,
)

REPO = Path(__file__).resolve().parents[1]
GOAL_MS = 150.0


@dataclass
class Series:
    phantom: Phantom
    ids: SeriesIds
    datasets: list[Dataset]

    @property
    def label(self) -> str:
        return "x".join(str(n) for n in self.phantom.geometry.shape)


class DecodingLoader:
    """Series decoded from their DICOM datasets on every load: what a cold session pays."""

    def __init__(self) -> None:
        self.series: dict[str, list[Dataset]] = {}

    def add(self, series: Series) -> None:
        self.series[series.ids.series_uid] = series.datasets

    def load(self, series: str) -> Volume:
        return volume_from_datasets(self.series[series])


@dataclass
class Samples:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    next: list[float] = field(default_factory=list)
    server_next: list[float] = field(default_factory=list)
    cold_parts: list[dict[str, float]] = field(default_factory=list)


def _series(geometry: Geometry, shapes: list[Shape], seed: int) -> Series:
    phantom = make_phantom(geometry, seed=seed, noise_hu=30.0, shapes=shapes)
    ids = SeriesIds()
    return Series(phantom, ids, list(phantom_datasets(phantom, ids)))


def large_series() -> Series:
    """200x512x512: two spheres and two boxes, as a 512-matrix CT with 1.5 mm slices holds."""
    shapes: list[Shape] = [
        Sphere((150.0, 190.0, 130.0), 25.0, 160.0),
        Sphere((80.0, 300.0, 300.0), 15.0, 240.0),
        Box((150.0, 190.0, 250.0), (20.0, 20.0, 20.0), 200.0),
        Box((230.0, 90.0, 300.0), (10.0, 12.0, 8.0), 280.0),
    ]
    return _series(Geometry(shape=(200, 512, 512), spacing=(1.5, 0.75, 0.75)), shapes, seed=0)


def small_series(shape: tuple[int, int, int]) -> Series:
    """A sphere and a box on a grid that SAM on a CPU gets through in seconds."""
    geometry = Geometry(shape=shape, spacing=(2.0, 0.8, 0.8))
    extent = geometry.extent_mm
    radius = min(15.0, extent[0] / 3, extent[2] / 6)
    shapes: list[Shape] = [
        Sphere((extent[0] / 2, extent[1] / 2, extent[2] * 0.3), radius, 180.0),
        Box((extent[0] / 2, extent[1] / 2, extent[2] * 0.72), (radius * 0.8,) * 3, 220.0),
    ]
    return _series(geometry, shapes, seed=1)


def _inside(
    phantom: Phantom, shape: Shape, rng: np.random.Generator, depth: float, z: int | None = None
) -> dict[str, int]:
    """A voxel of ``shape`` at ``depth`` (0 centre .. 1 border) of its half-size, as a click;
    on slice ``z`` (and in-plane from the centre) when given."""
    spacing = np.asarray(phantom.geometry.spacing)
    while True:
        direction = rng.normal(size=3)
        if z is not None:
            direction[0] = 0.0
        direction /= np.linalg.norm(direction)
        mm = np.asarray(shape.centre_mm) + direction * depth * min(shape.half_extent_mm)
        if z is not None:
            mm[0] = z * spacing[0]
        index = tuple(int(v) for v in np.rint(mm / spacing))
        if phantom.labels[index] == shape.label:
            return {"x": index[2], "y": index[1], "z": index[0]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """The service's FastAPI app on uvicorn in a background thread."""

    def __init__(self, config: InteractiveConfig, loader: DecodingLoader) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        app = create_app(config, loader=loader)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _post(http: requests.Session, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = http.post(url, json=body, timeout=600)
    elapsed = (time.perf_counter() - started) * 1000.0
    answer.raise_for_status()
    return elapsed, answer.json()


def measure(
    url: str, model: str, series: Series, *, cold: int, objects: int, nexts: int, seed: int = 0
) -> Samples:
    rng = np.random.default_rng(seed)
    samples = Samples()
    # The two largest objects: the slowest to grow and to cut, so p50 is not flattered.
    shapes = sorted(series.phantom.shapes, key=lambda s: -float(np.prod(s.half_extent_mm)))[:2]
    uid = series.ids.series_uid
    with requests.Session() as http:
        for _ in range(cold):
            click = _inside(series.phantom, shapes[0], rng, 0.3)
            body = {"series": uid, "model": model, "points": [click]}
            elapsed, answer = _post(http, f"{url}/segment", body)
            samples.cold.append(elapsed)
            samples.cold_parts.append(answer["timings"])
            http.delete(f"{url}/sessions/{answer['session']}", timeout=60).raise_for_status()
        _, answer = _post(
            http,
            f"{url}/segment",
            {
                "series": uid,
                "model": model,
                "points": [_inside(series.phantom, shapes[0], rng, 0.3)],
            },
        )
        session = answer["session"]
        for number in range(objects):
            shape = shapes[number % len(shapes)]
            http.post(f"{url}/sessions/{session}/reset", timeout=60).raise_for_status()
            points = [_inside(series.phantom, shape, rng, 0.3)]
            elapsed, _ = _post(
                http, f"{url}/segment", {"session": session, "model": model, "points": points}
            )
            samples.warm.append(elapsed)
            for _ in range(nexts):
                where = _inside(series.phantom, shape, rng, 0.75, z=points[0]["z"])
                points.append({**where, "label": 0})
                body = {"session": session, "model": model, "points": points}
                elapsed, answer = _post(http, f"{url}/segment", body)
                samples.next.append(elapsed)
                samples.server_next.append(float(answer["timings"]["total_ms"]))
    return samples


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, honest for small samples."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def _cell(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>8}"
    return f"{percentile(values, 50):8.0f} {percentile(values, 95):8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, small SAM case")
    parser.add_argument("--models", default="regiongrow,sam2,sam-onnx")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch, BLAS and ORT threads")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    models = args.models.split(",")
    counts = (
        {"cold": 2, "objects": 4, "nexts": 3}
        if args.quick
        else {"cold": 5, "objects": 8, "nexts": 4}
    )
    sam_counts = {"cold": 2, "objects": 2, "nexts": 2} if args.quick else counts
    began = time.perf_counter()
    loader = DecodingLoader()
    cases: list[tuple[str, Series, dict[str, int]]] = []
    if "regiongrow" in models:
        large = large_series()
        loader.add(large)
        cases.append(("regiongrow", large, counts))
    sam = [m for m in models if m != "regiongrow"]
    with tempfile.TemporaryDirectory() as folder:
        config: dict[str, Any] = {"store_accepted": False, "max_concurrent": 1}
        if sam:
            small = small_series((32, 128, 128) if args.quick else (64, 256, 256))
            loader.add(small)
            size = "256" if args.quick else "512"
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "scripts" / "build_test_sam_models.py"),
                    folder,
                    "--image-size",
                    size,
                ],
                check=True,
                capture_output=True,
            )
            built = load_models_file(Path(folder) / "interactive-models.yaml")
            built["models"]["sam-onnx"]["threads"] = args.threads
            config["models"] = {
                name: spec for name, spec in built["models"].items() if name in models
            }
            cases += [(m, small, sam_counts) for m in sam]
        print(
            f"interactive click latency, ms over HTTP; {args.threads} thread(s) per computation; "
            f"{'quick' if args.quick else 'full'} run; load average at start "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(
            f"{'backend':<11} {'series':<12} {'cold p50':>8} {'p95':>8} {'warm p50':>8} "
            f"{'p95':>8} {'next p50':>8} {'p95':>8}  {'n c/w/n':>8}  {'server next p50':>15}  "
            f"cold: load / features / decode"
        )
        with Server(InteractiveConfig.model_validate(config), loader) as server:
            results: dict[str, Samples] = {}
            for model, series, how in cases:
                samples = measure(server.url, model, series, **how)
                results[model] = samples
                parts = {
                    key: percentile([t[key] for t in samples.cold_parts], 50)
                    for key in ("load_ms", "embed_ms", "decode_ms")
                }
                print(
                    f"{model:<11} {series.label:<12} {_cell(samples.cold)} {_cell(samples.warm)} "
                    f"{_cell(samples.next)}  "
                    f"{len(samples.cold):>2}/{len(samples.warm)}/{len(samples.next):<3}  "
                    f"{percentile(samples.server_next, 50):15.0f}  "
                    f"{parts['load_ms']:.0f} / {parts['embed_ms']:.0f} / {parts['decode_ms']:.0f}",
                    flush=True,
                )
    if "regiongrow" in results:
        p50 = percentile(results["regiongrow"].next, 50)
        verdict = "met" if p50 < GOAL_MS else "NOT met"
        print(
            f"goal regiongrow next click p50 < {GOAL_MS:.0f} ms on 200x512x512: {verdict} "
            f"({p50:.0f} ms)"
        )
    print(f"bench took {time.perf_counter() - began:.0f} s")
    for model, samples in results.items():  # headline figures for `ainode bench`
        cold = percentile(samples.cold, 50)
        record("interactive", f"{model} first click, cold, p50", cold, "ms")
        record("interactive", f"{model} next click p50", percentile(samples.next, 50), "ms", cold)


if __name__ == "__main__":
    main()
