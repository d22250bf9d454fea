"""First click vs cached follow-up click of the interactive service, per model.

A 128x256x256 phantom series; one session per model; the first click pays for the session's
features (smoothed volume, slice embeddings), follow-up clicks on the same session reuse them.
Follow-ups add a negative click on the clicked slice (everything is decoded again); "fix +10"
adds one 10 slices away instead (decoder results below that slice are reused).
SAM models are the reduced random-weight SAM 2 built by ``scripts/build_test_sam_models.py``
(512 px input), so their masks are meaningless but their cost is real.

Usage: ``python bench/bench_interactive.py [--repeats 3] [--threads 1] [--models ...]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from ainode_worker.interactive.config import InteractiveConfig, load_models_file
from ainode_worker.interactive.prompts import Point
from ainode_worker.interactive.service import InteractiveService, Timings
from ainode_worker.interactive.volumes import InMemoryVolumeLoader, volume_from_datasets
from scipy import ndimage as ndi

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets

REPO = Path(__file__).resolve().parents[1]
SHAPE = (128, 256, 256)


def _click(labels: np.ndarray, label: int) -> tuple[int, int, int]:
    depth = ndi.distance_transform_edt(labels == label)
    z, y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(x), int(y), int(z)


def _row(name: str, first: Timings, follow: list[Timings]) -> str:
    median = statistics.median(t.total_ms for t in follow)
    decode = statistics.median(t.decode_ms for t in follow)
    slices = follow[-1].slices_decoded
    per_slice = f"{decode / slices:9.1f}" if slices else f"{'-':>9}"
    return (
        f"{name:<11} {first.total_ms:9.0f} {median:10.0f} {first.total_ms / median:7.1f}x "
        f"{first.embed_ms:9.0f} {decode:9.0f} {first.features_computed:6d} "
        f"{follow[-1].features_reused:6d} {slices:7d} {per_slice}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="follow-up clicks per model")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch and BLAS threads")
    parser.add_argument("--ort-threads", type=int, default=1)
    parser.add_argument("--models", default="regiongrow,sam2,sam-onnx")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    geometry = Geometry(shape=SHAPE, spacing=(1.5, 0.7, 0.7))
    phantom = make_phantom(geometry, seed=0)
    ids = SeriesIds()
    loader = InMemoryVolumeLoader()
    loader.add(volume_from_datasets(list(phantom_datasets(phantom, ids))))
    x, y, z = _click(phantom.labels, 1)

    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "build_test_sam_models.py"), folder],
            check=True,
            capture_output=True,
        )
        models = load_models_file(Path(folder) / "interactive-models.yaml")
        models["models"]["sam-onnx"]["threads"] = args.ort_threads
        config = InteractiveConfig.model_validate({**models, "store_accepted": False})
        service = InteractiveService(config, loader)
        print(f"phantom {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, click in the liver at x={x} y={y} z={z}")
        print(
            f"PyTorch/BLAS threads {args.threads}, ONNX Runtime threads {args.ort_threads}; "
            f"times in ms; follow-up = median of {args.repeats}; per slice = follow-up decode "
            "/ slices decoded; fix +10 = a negative click 10 slices from the anchor"
        )
        print(
            f"{'model':<11} {'first':>9} {'follow-up':>10} {'ratio':>8} {'embed':>9} "
            f"{'decode':>9} {'enc.':>6} {'reused':>6} {'slices':>7} {'per slice':>9} "
            f"{'fix +10':>9}"
        )
        for model in args.models.split(","):
            first = service.segment(model=model, series=ids.series_uid, points=(Point(x, y, z),))
            follow = [
                service.segment(
                    model=model,
                    session=first.session,
                    points=(Point(x, y, z), Point(x + 4 + i, y, z, False)),
                ).timings
                for i in range(args.repeats)
            ]
            above = min(z + 10, SHAPE[0] - 1)
            elsewhere = service.segment(
                model=model,
                session=first.session,
                points=(Point(x, y, z), Point(x, y, above, False)),
            ).timings
            print(f"{_row(model, first.timings, follow)} {elsewhere.total_ms:9.0f}", flush=True)
            service.close_session(first.session)


if __name__ == "__main__":
    main()
