"""Click latency of the interactive service: first click on a new and on an open series, next.

Everything goes through the real service over HTTP (``requests`` with keep-alive), so a
latency includes the request, the session, the mask's JSON encoding and the answer. The three
kinds of click, each reported as p50 and p95 (nearest-rank, n samples):

* **first, new series**: a new session on a series nobody has open (the service warm; the
  series is dropped before each sample with ``DELETE /series/{uid}``): the series is fetched
  and decoded and the backend's per-volume features computed where the click needs them;
* **first, open series**: a new session on a series another session holds: the volume and
  features are shared, so only the click's own region is computed;
* **next**: the clicks so far plus one more on the same object, alternately a negative click
  inside the object on the slice of the first click (region growing cuts the region again,
  SAM decodes every slice again: the costly follow-ups) and a positive one.

Clicks fall at a spread of depths in their objects (0, 0.3, 0.6 and 0.9 of the way from the
centre to the border), on the two largest objects of the series.

Region growing runs on a 200x512x512 CT phantom (0.75 mm pixels, 1.5 mm slices; two spheres
and two boxes of 160-280 HU, the largest of the specification's maximum size, noise 30 HU),
three ways: in this process (series decoded from DICOM datasets held in memory), and on a
real node (Orthanc, the plugin, the service as its own process; series fetched from Orthanc)
through the front door (nginx, HTTPS: what a viewer uses), through Orthanc's
``/ai/interactive`` proxy, and directly. The node rows also report the
service's resident memory with no series held and with 20 sessions open on the series.
Goals (issue 13): first click on an open series <= 300 ms, on a new series <= 1.0 s, next
click p50 <= 50 ms and p95 <= 150 ms. SAM 2 and SAM ONNX run in this process on the reduced
random-weight models of ``scripts/build_test_sam_models.py`` on a smaller series: their
masks are meaningless but their cost per encoded and decoded slice is real.

Usage: ``python bench/bench_interactive.py [--quick] [--models regiongrow,sam2,sam-onnx]
[--threads 1] [--no-node] [--node-only] [--load-routes N] [--cold N]``; ``--quick`` takes fewer
samples, a 32x128x128 series and 256-px models for SAM.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import requests
import uvicorn
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig, load_models_file
from ainode_worker.interactive.orthanc import (
    OrthancVolumeLoader,
    slice_dataset,
    slice_header,
)
from ainode_worker.interactive.volumes import build_volume, volume_from_datasets
from ainode_worker.orthanc import OrthancClient
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
sys.path.insert(0, str(REPO / "tests"))
from nodeharness import start_node  # noqa: E402

GOALS_MS = {"cold": 1000.0, "open": 300.0, "next p50": 50.0, "next p95": 150.0}
DEPTHS = (0.0, 0.3, 0.6, 0.9)
SESSIONS_FOR_MEMORY = 20


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
    open: list[float] = field(default_factory=list)
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
    url: str,
    model: str,
    series: Series,
    drop_url: str,
    *,
    cold: int,
    opens: int,
    objects: int,
    nexts: int,
    seed: int = 0,
    session: requests.Session | None = None,
) -> Samples:
    """Clicks on ``url`` with ``session`` (the client's login and trust; default: a plain
    one); ``drop_url`` is the service itself, where the series is dropped."""
    rng = np.random.default_rng(seed)
    samples = Samples()
    # The two largest objects: the slowest to grow and to cut, so p50 is not flattered.
    shapes = sorted(series.phantom.shapes, key=lambda s: -float(np.prod(s.half_extent_mm)))[:2]
    uid = series.ids.series_uid
    depths = iter(DEPTHS * (cold + opens + objects * (nexts + 1)))
    with session or requests.Session() as http:

        def first(shape: Shape) -> tuple[float, dict[str, Any]]:
            click = _inside(series.phantom, shape, rng, next(depths))
            return _post(http, f"{url}/segment", {"series": uid, "model": model, "points": [click]})

        def close(answer: dict[str, Any]) -> None:
            http.delete(f"{url}/sessions/{answer['session']}", timeout=60).raise_for_status()

        for number in range(cold):
            dropped = requests.delete(f"{drop_url}/series/{uid}", timeout=60)
            assert dropped.status_code == 404 or dropped.json()["dropped"], dropped.text
            elapsed, answer = first(shapes[number % len(shapes)])
            samples.cold.append(elapsed)
            samples.cold_parts.append(answer["timings"])
            close(answer)
        _, holder = first(shapes[0])  # another user keeps the series open
        for number in range(opens):
            elapsed, answer = first(shapes[number % len(shapes)])
            samples.open.append(elapsed)
            close(answer)
        for number in range(objects):
            shape = shapes[number % len(shapes)]
            points = [_inside(series.phantom, shape, rng, next(depths))]
            body = {"series": uid, "model": model, "points": points}
            _, answer = _post(http, f"{url}/segment", body)
            session = answer["session"]
            for step in range(nexts):
                if step % 2 == 0:
                    where = _inside(series.phantom, shape, rng, 0.75, z=points[0]["z"])
                    points.append({**where, "label": 0})
                else:
                    points.append(_inside(series.phantom, shape, rng, next(depths)))
                body = {"session": session, "model": model, "points": points}
                elapsed, answer = _post(http, f"{url}/segment", body)
                samples.next.append(elapsed)
                samples.server_next.append(float(answer["timings"]["total_ms"]))
            close(answer)
        close(holder)
    return samples


def resident_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def memory(
    url: str, series: Series, pid: int, auth: tuple[str, str] | None = None
) -> tuple[float, float, int]:
    """The service's RSS with no series held, then with 20 sessions on the series (MiB)."""
    uid = series.ids.series_uid
    requests.delete(f"{url}/series/{uid}", timeout=60)
    before = resident_mb(pid)
    rng = np.random.default_rng(1)
    sessions = []
    with requests.Session() as http:
        http.auth = auth
        for number in range(SESSIONS_FOR_MEMORY):
            shape = series.phantom.shapes[number % len(series.phantom.shapes)]
            click = _inside(series.phantom, shape, rng, 0.3)
            _, answer = _post(http, f"{url}/segment", {"series": uid, "points": [click]})
            sessions.append(answer["session"])
        after = resident_mb(pid)
        held = http.get(f"{url}/series", timeout=60).json()["series"]
        for session in sessions:
            http.delete(f"{url}/sessions/{session}", timeout=60).raise_for_status()
    return before, after, len(held)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, honest for small samples."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def _cell(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>8}"
    return f"{percentile(values, 50):8.0f} {percentile(values, 95):8.0f}"


def _row(name: str, series: Series, samples: Samples) -> str:
    parts = {
        key: percentile([t[key] for t in samples.cold_parts], 50)
        for key in ("load_ms", "embed_ms", "decode_ms")
    }
    return (
        f"{name:<24} {series.label:<12} {_cell(samples.cold)} {_cell(samples.open)} "
        f"{_cell(samples.next)}  "
        f"{len(samples.cold):>2}/{len(samples.open)}/{len(samples.next):<3}  "
        f"{percentile(samples.server_next, 50):11.0f}  "
        f"{parts['load_ms']:.0f} / {parts['embed_ms']:.0f} / {parts['decode_ms']:.0f}"
    )


def _verdicts(name: str, samples: Samples) -> str:
    figures = {
        "cold": percentile(samples.cold, 50),
        "open": percentile(samples.open, 50),
        "next p50": percentile(samples.next, 50),
        "next p95": percentile(samples.next, 95),
    }
    return f"{name}: " + ", ".join(
        f"{key} {value:.0f} ms ({'met' if value <= GOALS_MS[key] else 'NOT met'} "
        f"<= {GOALS_MS[key]:.0f})"
        for key, value in figures.items()
    )


def _p50_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000.0)
    return percentile(times, 50)


def load_routes(url: str, auth: tuple[str, str] | None, uid: str, repeats: int) -> None:
    """Where loading a series from Orthanc goes, step by step, and the candidate routes.

    Run in this process against the node's Orthanc (no door, no service): p50 of ``repeats``.
    """
    client = OrthancClient(url, auth, timeout_s=120.0)  # the service's client: 4 at a time
    loader = OrthancVolumeLoader(client)
    http = requests.Session()
    http.auth = auth
    series_id = client.resolve_series(uid)
    ids = client.instance_ids(series_id)

    def files(parallel: int) -> list[bytes]:
        def one(instance: str) -> bytes:
            return http.get(f"{url}/instances/{instance}/file", timeout=120).content

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(one, ids))

    def numpy_route(path: str, parallel: int = 1) -> object:
        def one(name: str) -> object:
            answer = http.get(f"{url}/{name}/{path}", timeout=120)
            return np.load(io.BytesIO(answer.content))

        names = [f"series/{series_id}"] if parallel == 1 else [f"instances/{i}" for i in ids]
        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(one, names))

    raw = files(4)
    parsed = [pydicom.dcmread(io.BytesIO(r)) for r in raw]
    for dataset in parsed:
        dataset.pixel_array  # noqa: B018 - decoded, as the files' route hands them over
    tags = client.instances_tags(series_id)
    order = client.ordered_slices(series_id)
    values = client.series_stored_values(series_id)

    def slices() -> list[pydicom.Dataset]:
        return [slice_dataset(tags[i], values[k, ..., 0].data) for k, i in enumerate(order)]

    def raw_frames(parallel: int) -> list[bytes]:
        def one(instance: str) -> bytes:
            return http.get(f"{url}/instances/{instance}/frames/0/raw", timeout=120).content

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(one, ids))

    steps = {
        "files' route (today): the whole load": lambda: loader.load_files(series_id),
        "  GET /instances/{id}/file x N, 4 at a time (bytes)": lambda: files(4),
        "  files, 8 at a time": lambda: files(8),
        "  pydicom: parse and decode N files": lambda: [
            pydicom.dcmread(io.BytesIO(r)).pixel_array for r in raw
        ],
        "  volume builder and header copies": lambda: volume_from_datasets(parsed),
        "fast route: the whole load": lambda: loader.load_fast(series_id),
        "  POST /tools/bulk-content (ids, transfer syntaxes)": lambda: client.transfer_syntaxes(
            series_id
        ),
        "  GET /series/{id}/instances-tags (every instance's tags)": lambda: client.instances_tags(
            series_id
        ),
        "  GET /series/{id}/ordered-slices": lambda: client.ordered_slices(series_id),
        "  GET /series/{id}/numpy?rescale=0 (stored values)": lambda: client.series_stored_values(
            series_id
        ),
        "  slice headers from the tags": lambda: [slice_header(tags[i]) for i in ids],
        "  slices (tags and values) and the volume builder": lambda: build_volume(slices()),
        "candidate: GET /series/{id}/numpy?rescale=1 (rounds)": lambda: numpy_route(
            "numpy?rescale=1"
        ),
        "candidate: GET /instances/{id}/frames/0/raw x N, 4 at a time": lambda: raw_frames(4),
        "candidate: the same, 8 at a time": lambda: raw_frames(8),
        "candidate: GET /instances/{id}/numpy?rescale=0, 4 at a time": lambda: numpy_route(
            "numpy?rescale=0", 4
        ),
    }
    print(f"loading the {len(ids)}-instance series from Orthanc, p50 of {repeats}, ms:")
    for name, work in steps.items():
        print(f"  {name:<64} {_p50_ms(work, repeats):7.0f}   load {os.getloadavg()[0]:.1f}")


def on_node(series: Series, how: dict[str, int], routes: int = 0) -> dict[str, Samples]:
    """Region growing on a real node: through the door, Orthanc's proxy and directly; memory.

    ``routes`` > 0: first the steps of loading the series from Orthanc (:func:`load_routes`).
    """
    results: dict[str, Samples] = {}
    with tempfile.TemporaryDirectory() as folder:
        node = start_node(Path(folder) / "node", worker_enabled=False)
        try:
            for dataset in series.datasets:
                buffer = io.BytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                node.post("/instances", data=buffer.getvalue()).raise_for_status()
            if routes:
                load_routes(node.url, node.auth, series.ids.series_uid, routes)
            direct = node.settings.interactive_url
            proxy = requests.Session()
            proxy.auth = node.auth
            clients = (
                # What a viewer uses: the front door (nginx, HTTPS), straight to the service.
                ("node, through the door", f"{node.door_url}/ai/interactive", node.door_session()),
                ("node, via Orthanc proxy", f"{node.url}/ai/interactive", proxy),
                ("node, direct", direct, requests.Session()),
            )
            for name, url, session in clients:
                samples = measure(url, "regiongrow", series, direct, session=session, **how)
                results[name] = samples
                print(_row(name, series, samples), flush=True)
            before, after, held = memory(direct, series, node.pid("interactive"))
            print(
                f"node service resident memory: {before:.0f} MiB with no series, {after:.0f} MiB "
                f"with {SESSIONS_FOR_MEMORY} sessions on the {series.label} series "
                f"({held} series held; the volume alone is "
                f"{np.prod(series.phantom.geometry.shape) * 4 / 2**20:.0f} MiB)",
                flush=True,
            )
        finally:
            node.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, small SAM case")
    parser.add_argument("--models", default="regiongrow,sam2,sam-onnx")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch, BLAS and ORT threads")
    parser.add_argument("--no-node", action="store_true", help="skip the runs on a real node")
    parser.add_argument(
        "--load-routes",
        type=int,
        default=0,
        metavar="N",
        help="on the node, time each step of loading the series from Orthanc N times first",
    )
    parser.add_argument(
        "--node-only", action="store_true", help="skip the runs in this process (no Orthanc)"
    )
    parser.add_argument(
        "--cold", type=int, default=0, help="first clicks on a new series (default 5, quick 3)"
    )
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    models = args.models.split(",")
    counts = (
        {"cold": 3, "opens": 4, "objects": 4, "nexts": 4}
        if args.quick
        else {"cold": 5, "opens": 8, "objects": 8, "nexts": 6}
    )
    if args.cold:
        counts["cold"] = args.cold
    sam_counts = {"cold": 2, "opens": 2, "objects": 2, "nexts": 2} if args.quick else counts
    began = time.perf_counter()
    loader = DecodingLoader()
    cases: list[tuple[str, Series, dict[str, int]]] = []
    large = None
    if "regiongrow" in models:
        large = large_series()
        loader.add(large)
        cases.append(("regiongrow", large, counts))
    sam = [m for m in models if m != "regiongrow"]
    results: dict[str, Samples] = {}
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
            f"{'backend':<24} {'series':<12} {'new p50':>8} {'p95':>8} {'open p50':>8} "
            f"{'p95':>8} {'next p50':>8} {'p95':>8}  {'n n/o/n':>8}  {'server next':>11}  "
            f"new series: load / features / decode"
        )
        with Server(InteractiveConfig.model_validate(config), loader) as server:
            for model, series, how in [] if args.node_only else cases:
                samples = measure(server.url, model, series, server.url, **how)
                results[model] = samples
                print(_row(model, series, samples), flush=True)
            if large is not None and not args.node_only:
                before, after, held = memory(server.url, large, os.getpid())
                print(
                    f"this process's resident memory: {before:.0f} MiB with no series, "
                    f"{after:.0f} MiB with {SESSIONS_FOR_MEMORY} sessions ({held} series held)",
                    flush=True,
                )
    if large is not None and not args.no_node:
        results.update(on_node(large, counts, args.load_routes))
    for name in [n for n in results if n == "regiongrow" or n.startswith("node")]:
        print(_verdicts(name, results[name]))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"bench took {time.perf_counter() - began:.0f} s")
    for model, samples in results.items():  # headline figures for `ainode bench`
        cold = percentile(samples.cold, 50)
        record("interactive", f"{model} first click, new series, p50", cold, "ms")
        record("interactive", f"{model} next click p50", percentile(samples.next, 50), "ms", cold)


if __name__ == "__main__":
    main()
