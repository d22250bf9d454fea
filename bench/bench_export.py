"""Time writing a 512x512x300 label map with 10 labels as BINARY SEG, LABELMAP SEG and RTSTRUCT.

Run: ``python bench/bench_export.py [--slices 300] [--size 512] [--labels 10]``. Prints a
Markdown table of build and save times, file sizes and the ratio to BINARY.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from ainode_worker.results import Provenance, save_dicom, write_rtstruct, write_seg
from pydicom import Dataset

from ainode.bench import record
from ainode.jobs import OutputKind
from ainode.phantoms import Geometry, Phantom, phantom_datasets
from ainode.registry import Code, LabelSpec

ANATOMY = Code(value="123037004", meaning="Anatomical Structure")
ORGAN = Code(value="91772007", meaning="Organ")


def label_map(shape: tuple[int, int, int], n_labels: int, seed: int = 0) -> np.ndarray:
    """Non-overlapping ellipsoids of varied size, one per label, filling a body-like volume."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    nz, ny, nx = shape
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    for value in range(1, n_labels + 1):
        centre = rng.uniform([0.2, 0.25, 0.25], [0.8, 0.75, 0.75]) * shape
        radii = rng.uniform([0.05, 0.04, 0.04], [0.2, 0.15, 0.15]) * shape
        inside = (
            ((zz - centre[0]) / radii[0]) ** 2
            + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2
        ) <= 1.0
        labels[inside & (labels == 0)] = value
    return labels


def timed(build: Callable[[], Dataset], kind: OutputKind, folder: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    dataset = build()
    built = time.perf_counter()
    written = save_dicom(dataset, kind, folder)
    saved = time.perf_counter()
    return built - start, saved - built, written.path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=10)
    args = parser.parse_args()
    shape = (args.slices, args.size, args.size)
    geometry = Geometry(shape=shape, spacing=(1.0, 0.75, 0.75))
    truth = label_map(shape, args.labels)
    phantom = Phantom(image=np.zeros(shape, dtype=np.int16), labels=truth, geometry=geometry)
    sources = list(phantom_datasets(phantom))
    labels = [
        LabelSpec(value=v, name=f"organ {v}", category=ANATOMY, type=ORGAN)
        for v in range(1, args.labels + 1)
    ]
    provenance = Provenance("bench", "Bench model", "1.0", "bench-rule", "bench")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        builders: dict[OutputKind, Callable[[], Dataset]] = {
            OutputKind.SEG: partial(write_seg, truth, sources, labels, provenance),
            OutputKind.SEG_LABELMAP: partial(
                write_seg, truth, sources, labels, provenance, kind=OutputKind.SEG_LABELMAP
            ),
            OutputKind.RTSTRUCT: partial(write_rtstruct, truth, sources, labels, provenance),
        }
        for kind, build in builders.items():
            rows.append((kind, *timed(build, kind, folder)))
    binary_total = rows[0][1] + rows[0][2]
    binary_size = rows[0][3]
    print(
        f"{args.size}x{args.size}x{args.slices}, {args.labels} labels, "
        f"{int(np.count_nonzero(truth))} labelled voxels\n"
    )
    header = (
        "output",
        "build (s)",
        "save (s)",
        "total (s)",
        "size (MB)",
        "time/BINARY",
        "size/BINARY",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for kind, build_s, save_s, size in rows:
        total = build_s + save_s
        print(
            f"| {kind.value} | {build_s:.2f} | {save_s:.2f} | {total:.2f} | {size / 1e6:.1f} "
            f"| {total / binary_total:.2f} | {size / binary_size:.3f} |"
        )
        grid = f"{args.size}x{args.size}x{args.slices}, {args.labels} labels"
        record("export", f"{kind.value} build+save, {grid}", total, "s", baseline=binary_total)
        record("export", f"{kind.value} file size, {grid}", size / 1e6, "MB", binary_size / 1e6)


if __name__ == "__main__":
    main()
