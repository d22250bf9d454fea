"""Delivery benchmark: inference throughput with a slow PACS vs a fast one, side by side.

Run: ``.venv/bin/python bench/bench_delivery.py [--series 6]``. Starts one real node (``ainode``
supervisor: Orthanc, plugin, Redis, the worker and the delivery worker) whose rule sends the
demo model's SEG and RTSTRUCT to Orthanc and to a remote DICOM peer. The peer is DCMTK's
storescp, first as it is (fast), then accepting one instance per second (``--sleep-during 1``);
the same number of series is pushed at once in each round. Delivery runs apart from inference
(worker/ainode_worker/delivery.py), so the inference queue's throughput (series whose results
are written, per minute) should be the same with both peers, while delivery ends later with the
slow one. A warm-up series loads the model first. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeharness import ONNX_RULES, Node, free_port, start_node, write_phantom, write_rules
from unit.destinations.peers import StoreScp, start_storescp, stop

from ainode.bench import record

PACS_AET = "REMOTEPACS"
RULES = ONNX_RULES.replace("destinations: [orthanc]", 'destinations: [orthanc, "dicom:PACS"]')
SLICES = 16
TIMEOUT_S = 1800.0


def jobs_of(node: Node, series_uids: list[str]) -> list[dict[str, Any]]:
    jobs = node.json("/ai/jobs?limit=500")["jobs"]
    return [j for j in jobs if j.get("series_uid") in series_uids]


def run_round(node: Node, folder: Path, seeds: range) -> dict[str, float]:
    """Push one series per seed at once; times until every job's results are written (the
    inference task handed them to delivery) and until every job ended."""
    series = []
    for seed in seeds:
        paths, ids = write_phantom(folder / f"ct{seed}", SLICES, seed=seed)
        series.append((paths, ids.series_uid))
    started = time.perf_counter()
    for paths, _ in series:
        node.storescu(paths)
    uids = [uid for _, uid in series]
    written_at = ended_at = None
    attempts = 0
    deadline = time.monotonic() + TIMEOUT_S
    while ended_at is None and time.monotonic() < deadline:
        jobs = jobs_of(node, uids)
        if len(jobs) == len(uids):
            if written_at is None and all("results" in j.get("detail", {}) for j in jobs):
                written_at = time.perf_counter() - started
            if all(j["state"] in ("done", "failed") for j in jobs):
                ended_at = time.perf_counter() - started
                bad = [j["error"] for j in jobs if j["state"] != "done"]
                if bad:
                    raise SystemExit(f"jobs failed: {bad}")
                attempts = max(j["attempts"] for j in jobs)  # >1: a lease lapsed
        time.sleep(0.1)
    if written_at is None or ended_at is None:
        raise SystemExit("the round did not end in time")
    return {
        "written_s": written_at,
        "ended_s": ended_at,
        "series": float(len(uids)),
        "attempts": float(attempts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=6, help="series pushed per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ainode-bench-delivery-") as tmp:
        folder = Path(tmp)
        pacs_port = free_port()
        node = start_node(
            folder / "node",
            routing_rules=write_rules(folder / "rules.yaml", RULES),
            remote_modalities={"PACS": {"aet": PACS_AET, "host": "127.0.0.1", "port": pacs_port}},
        )
        pacs: StoreScp | None = None
        try:
            pacs = start_storescp(folder / "warm", pacs_port, "-aet", PACS_AET)
            run_round(node, folder / "warmup", range(900, 901))
            rounds: dict[str, dict[str, float]] = {}
            for name, extra, first in (
                ("fast", (), 100),
                ("slow", ("--sleep-during", "1"), 200),
            ):
                stop(pacs.process)
                pacs = start_storescp(folder / name, pacs_port, "-aet", PACS_AET, *extra)
                rounds[name] = run_round(
                    node, folder / f"in-{name}", range(first, first + args.series)
                )
                received = len([p for p in (folder / name).iterdir() if p.is_file()])
                rounds[name]["received"] = float(received)
        finally:
            if pacs is not None:
                stop(pacs.process)
            node.stop()
    report(rounds, args.series)


def report(rounds: dict[str, dict[str, float]], series: int) -> None:
    per_minute = {n: 60.0 * r["series"] / r["written_s"] for n, r in rounds.items()}
    print(f"# Delivery apart from inference ({platform.node()}, {series} series per round)\n")
    print(
        "| PACS | results written (all series) | series/min through inference "
        "| all delivered | instances at the PACS | most attempts of a job |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rounds.items():
        print(
            f"| {name} | {r['written_s']:.1f} s | {per_minute[name]:.1f} | {r['ended_s']:.1f} s "
            f"| {int(r['received'])} | {int(r['attempts'])} |"
        )
    record(
        "delivery",
        "inference series/min, PACS 1 instance/s",
        round(per_minute["slow"], 2),
        "series/min",
        baseline=round(per_minute["fast"], 2),
        note=f"{series} series pushed at once; baseline: the same with a fast PACS",
    )
    record(
        "delivery",
        "all delivered, PACS 1 instance/s",
        round(rounds["slow"]["ended_s"], 1),
        "s",
        baseline=round(rounds["fast"]["ended_s"], 1),
        note="delivery lags behind inference; the worker does not wait for it",
    )


if __name__ == "__main__":
    main()
