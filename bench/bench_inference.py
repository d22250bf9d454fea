"""Inference benchmark: where a series' time goes in the worker, beside bare nnU-Net.

Run: ``.venv/bin/python bench/bench_inference.py [--sizes 48x64x64 128x128x128]``. Starts a real
node (default rules: CT -> ``demo-phantom``), and for each phantom size:

1. pushes the series with ``storescu`` and reads the job's own ``detail`` (``seconds``, and the
   pipeline's ``timings``) once it is done;
2. runs the worker's steps in this process on the same series, timing each one: fetch
   (``OrthancClient.series_datasets``), volume (``volume_from_datasets``), predict
   (``run_pipeline``), export (``export_results``), store (``send_to_destinations``);
3. runs ``nnUNetPredictor.predict_single_npy_array`` alone on the same voxels.

Models are loaded once before timing (load times are printed separately). Prints a Markdown
table whose last column is the overhead: end-to-end time / bare nnU-Net time.
"""

from __future__ import annotations

import argparse
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import requests
import torch
from ainode_worker.destinations import pending_statuses, send_to_destinations
from ainode_worker.inference.pipeline import run_pipeline
from ainode_worker.jobrunner import WorkerContext
from ainode_worker.results import Provenance
from ainode_worker.results.export import export_results
from ainode_worker.volume import Volume, volume_from_datasets
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from ainode.jobs import Destination, DestinationKind, OutputKind
from ainode.node.supervisor import Supervisor
from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets
from ainode.settings import Settings

PIPELINE = "demo-phantom"
OUTPUTS = [OutputKind.SEG, OutputKind.RTSTRUCT]
T = TypeVar("T")
REPEATS = 3  # in-process steps and bare nnU-Net: the fastest of this many runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def parse_size(text: str) -> tuple[int, int, int]:
    s, r, c = (int(v) for v in text.lower().split("x"))
    return (s, r, c)


class Bench:
    def __init__(self, settings: Settings, work: Path) -> None:
        self.settings = settings
        self.work = work
        self.ctx = WorkerContext.from_settings(settings, hostname="bench")
        self.http = requests.Session()
        self.predictor: Any = None

    def push(self, shape: tuple[int, int, int], seed: int) -> tuple[SeriesIds, Path]:
        geometry = Geometry(shape=shape, spacing=(2.5, 0.8 * 64 / shape[1], 0.8 * 64 / shape[2]))
        ids = SeriesIds()
        folder = self.work / f"series-{ids.series_uid}"
        folder.mkdir(parents=True)
        for index, ds in enumerate(phantom_datasets(make_phantom(geometry, seed=seed), ids)):
            ds.save_as(folder / f"IM{index:05d}.dcm", enforce_file_format=True)
        subprocess.run(
            [
                "storescu",
                "-xs",
                "+sd",
                "+r",
                "-aec",
                self.settings.dicom_aet,
                "127.0.0.1",
                str(self.settings.dicom_port),
                str(folder),
            ],
            check=True,
            capture_output=True,
        )
        return ids, folder

    def job_of(self, series_uid: str, timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.http.get(
                f"{self.settings.http_url}/ai/jobs", params={"series": series_uid}, timeout=30
            )
            answer.raise_for_status()
            for job in answer.json()["jobs"]:
                if job["state"] in ("done", "failed"):
                    return dict(job)
            time.sleep(0.2)
        raise TimeoutError(f"no finished job for series {series_uid}")

    def in_process(self, series_id: str, tag: str) -> tuple[dict[str, float], Volume]:
        """The worker's steps, each timed, as ``jobrunner`` runs them."""
        t: dict[str, float] = {}
        datasets, t["fetch"] = timed(lambda: self.ctx.orthanc.series_datasets(series_id))
        volume, t["volume"] = timed(lambda: volume_from_datasets(datasets))
        result, t["predict"] = timed(
            lambda: run_pipeline(
                self.ctx.registry, PIPELINE, {"main": volume}, {}, cache=self.ctx.cache
            )
        )
        spec = self.ctx.registry.get(PIPELINE)
        provenance = Provenance(
            model_id=spec.id,
            model_name=spec.name,
            model_version=result.model_version,
            rule="bench",
            pipeline=PIPELINE,
        )
        written, t["export"] = timed(
            lambda: export_results(
                result.labels,
                volume.datasets,
                result.label_specs,
                provenance,
                OUTPUTS,
                self.work / f"results-{tag}",
            )
        )
        files = [w.path for w in written if w.is_dicom]
        statuses = pending_statuses([Destination(kind=DestinationKind.ORTHANC)])
        _, t["store"] = timed(lambda: send_to_destinations(files, statuses, self.settings))
        t["total"] = sum(t.values())
        return t, volume

    def load_predictor(self) -> float:
        registry = self.ctx.registry
        spec = registry.get(PIPELINE)
        weights = registry.weights_path(spec)
        start = time.perf_counter()
        self.predictor = nnUNetPredictor(
            tile_step_size=spec.defaults.tile_step_size,
            use_gaussian=True,
            use_mirroring=spec.defaults.tta,
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            verbose=False,
            allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(
            str(weights),
            use_folds=tuple(spec.defaults.folds),
            checkpoint_name=spec.defaults.checkpoint_name,
        )
        return time.perf_counter() - start

    def bare(self, volume: Volume) -> float:
        image = volume.array[None].astype(np.float32)
        properties = {"spacing": list(volume.spacing)}
        _, seconds = timed(
            lambda: self.predictor.predict_single_npy_array(image, properties, None, None, False)
        )
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["48x64x64", "128x128x128"])
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        work = Path(tmp)
        settings = Settings(
            data_dir=work / "node",
            http_port=free_port(),
            dicom_port=free_port(),
            redis_port=free_port(),
            interactive_port=free_port(),
            auth_enabled=False,
            http_bind_all=False,
            stable_age_s=1,
        )
        supervisor = Supervisor(settings)
        supervisor.prepare()
        supervisor.start()
        try:
            run(Bench(settings, work), sizes)
        finally:
            supervisor.stop()


def run(bench: Bench, sizes: list[tuple[int, int, int]]) -> None:
    # Warm-up: the node's worker and this process each load the model once.
    ids, _ = bench.push((16, 64, 64), seed=100)
    warm = bench.job_of(ids.series_uid)
    series_id = str(warm["series_id"])
    _, cold = timed(lambda: bench.in_process(series_id, "warm"))
    predictor_load = bench.load_predictor()
    print(
        f"Warm-up (16x64x64): node job {warm['state']} in {warm['detail'].get('seconds')} s "
        f"(model load {_load(warm):.2f} s); in-process first run {cold:.2f} s; "
        f"nnUNetPredictor init {predictor_load:.2f} s\n"
    )
    header = [
        "phantom",
        "where",
        "fetch s",
        "volume s",
        "predict s",
        "export s",
        "store s",
        "end-to-end s",
        "bare nnU-Net s",
        "overhead x",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for index, shape in enumerate(sizes):
        name = "x".join(map(str, shape))
        ids, _ = bench.push(shape, seed=index + 1)
        job = bench.job_of(ids.series_uid)
        if job["state"] != "done":
            raise RuntimeError(f"the node's job failed: {job['error']}")
        runs = [bench.in_process(str(job["series_id"]), f"{name}-{n}") for n in range(REPEATS)]
        steps = {k: min(r[0][k] for r in runs) for k in runs[0][0]}
        volume = runs[0][1]
        bare = min(bench.bare(volume) for _ in range(REPEATS))
        node_total = float(job["detail"]["seconds"])
        node_predict = float(job["detail"]["timings"]["total_s"])
        cell = "| {} | {} | {} | {} | {} | {} | {} | {:.2f} | {:.2f} | {:.2f} |"
        print(
            cell.format(
                name, "node job", "-", "-", f"{node_predict:.2f}", "-", "-",
                node_total, bare, node_total / bare,
            )
        )  # fmt: skip
        print(
            cell.format(
                name,
                "in-process",
                *(f"{steps[k]:.2f}" for k in ("fetch", "volume", "predict", "export", "store")),
                steps["total"],
                bare,
                steps["total"] / bare,
            )
        )
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        "threads, CPU. 'node job' = the job's detail.seconds (worker, from report 'running' to "
        "the end; predict = detail.timings.total_s); in-process steps and bare "
        f"predict_single_npy_array: fastest of {REPEATS} runs; end-to-end = sum of the fastest."
    )


def _load(job: dict[str, Any]) -> float:
    timings = job.get("detail", {}).get("timings", {})
    return float(sum(v for k, v in timings.items() if k.endswith(".load_s")))


if __name__ == "__main__":
    main()
