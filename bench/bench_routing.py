"""Routing benchmark: what the plugin costs C-STORE ingest, and how soon a series becomes a job.

Run: ``.venv/bin/python bench/bench_routing.py [--rounds 5]``. Starts three receivers side by
side and, round after round, sends each the same new 300-slice 256x256 CT series with
``storescu`` (TCP_NODELAY, 128 KiB PDUs, as the harness does):

- a real node whose rules route CT to the ONNX demo model (routing active, a job runs);
- a real node whose rules ignore every series (the plugin decides, no job runs);
- Orthanc with the node's tuned configuration but without our Python plugin.

Within a round the receivers take turns going first, so load from elsewhere on the machine
spreads over all three; each push waits until the previous one was routed and its job ended.
Prints Markdown tables: the median ingest rate of each receiver with its ratio to plain
Orthanc, and the delays from the last instance stored (``storescu`` returned) to the job being
decided, sent to the broker and done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeharness import ONNX_RULES, Node, node_settings, start_node, wait_for, write_rules

from ainode.bench import record
from ainode.node.orthanc_config import render_orthanc_config
from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series

SLICES = 300
STABLE_AGE_S = 2  # the product default (settings.stable_age_s)

IGNORE_ALL_RULES = """\
version: 1
mode: first-match
rules:
  - name: ignore-all
    action: ignore
    when:
      InstanceCount: {ge: 1}
"""


def storescu(port: int, folder: Path) -> float:
    """Seconds until ``storescu`` returns: the last instance is stored by then."""
    started = time.perf_counter()
    subprocess.run(
        [
            "storescu",
            "-xs",
            "--max-pdu",
            "131072",
            "-aec",
            "AINODE",
            "+sd",
            "+r",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def plain_orthanc(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Orthanc with the node's configuration (same settings, DICOMweb) minus our plugin."""
    settings = node_settings(workdir)
    config = render_orthanc_config(
        settings, credentials=None, settings_file=workdir / "unused.json", site_packages=[]
    )
    config["Plugins"] = [p for p in config["Plugins"] if "Python" not in p]
    config.pop("PythonScript", None)
    config.pop("AINode", None)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    with (workdir / "orthanc.log").open("ab") as log:
        process = subprocess.Popen(
            [str(settings.orthanc_binary), str(path)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def answers() -> bool:
        try:
            return requests.get(f"{settings.http_url}/system", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(answers, 60, 0.2, "plain Orthanc to answer")
    return process, settings.dicom_port


def _seconds_after(moment: str | None, reference: float) -> float:
    if moment is None:
        return float("nan")
    return datetime.fromisoformat(moment).timestamp() - reference


def routed(node: Node, series_uid: str, *, run: bool) -> dict[str, Any]:
    """The series' decision, once its job ended (``run``) or once it is recorded."""

    def ready() -> dict[str, Any] | None:
        jobs = node.jobs(series=series_uid)
        if run:
            jobs = [j for j in jobs if j["state"] in ("done", "failed")]
        return jobs[0] if jobs else None

    decision: dict[str, Any] = wait_for(ready, 600, 0.1, "the series to be routed")
    return decision


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        routing = start_node(
            work / "routing",
            routing_rules=write_rules(work / "routing.yaml", ONNX_RULES),
            stable_age_s=STABLE_AGE_S,
        )
        ignoring = start_node(
            work / "ignoring",
            routing_rules=write_rules(work / "ignoring.yaml", IGNORE_ALL_RULES),
            stable_age_s=STABLE_AGE_S,
            worker_enabled=False,
        )
        plain, plain_port = plain_orthanc(work / "plain")
        rates: dict[str, list[float]] = {"plain": [], "ignoring": [], "routing": []}
        delays: dict[str, list[float]] = {"decided": [], "sent": [], "done": [], "ignored": []}
        failed = 0
        try:
            for index in range(args.rounds):
                folder = work / f"series{index}"
                ids = SeriesIds()
                geometry = Geometry(shape=(SLICES, 256, 256), spacing=(1.0, 0.8, 0.8))
                write_series(make_phantom(geometry, seed=index), folder, ids)

                order = ["plain", "ignoring", "routing"]
                for key in order[index % 3 :] + order[: index % 3]:  # each goes first in turn
                    if key == "plain":
                        rates[key].append(SLICES / storescu(plain_port, folder))
                        continue
                    node = routing if key == "routing" else ignoring
                    seconds = storescu(node.settings.dicom_port, folder)
                    stored = time.time()
                    rates[key].append(SLICES / seconds)
                    job = routed(node, ids.series_uid, run=key == "routing")
                    if key == "ignoring":
                        delays["ignored"].append(_seconds_after(job["created_at"], stored))
                        continue
                    failed += job["state"] != "done"
                    delays["decided"].append(_seconds_after(job["created_at"], stored))
                    delays["sent"].append(_seconds_after(job["sent_at"], stored))
                    delays["done"].append(_seconds_after(job["finished_at"], stored))
                for path in folder.iterdir():
                    path.unlink()
        finally:
            plain.terminate()
            plain.wait(60)
            ignoring.stop()
            routing.stop()

    load = os.getloadavg()
    out = [
        f"Routing benchmark: {args.rounds} rounds of one {SLICES}-slice 256x256 CT by storescu "
        f"({platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the "
        f"end, StableAge {STABLE_AGE_S} s)",
        "",
        "| receiver | median instances/s | min | max | ratio to plain Orthanc (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    names = {
        "plain": "Orthanc, tuned config, no plugin",
        "ignoring": "node, rules ignore every series",
        "routing": "node, routing to the ONNX demo model",
    }
    for key, label in names.items():
        values = rates[key]
        # Each round's rate against plain Orthanc's in the same round: load from elsewhere on
        # the machine drifts between rounds more than within one.
        ratio = median([value / plain for value, plain in zip(values, rates["plain"], strict=True)])
        out.append(
            f"| {label} | {median(values):.0f} | {min(values):.0f} | {max(values):.0f} | "
            f"{ratio:.3f} |"
        )
        record("routing", f"ingest, {label}", median(values), "instances/s", median(rates["plain"]))
    out += [
        "",
        "| from the last instance stored to | median s | min | max |",
        "|---|---|---|---|",
    ]
    steps = {
        "ignored": "decision recorded (rules ignore all)",
        "decided": "job recorded (queued)",
        "sent": "job sent to the broker",
        "done": "job done (SEG + RTSTRUCT stored)",
    }
    for key, label in steps.items():
        values = delays[key]
        out.append(f"| {label} | {median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
        record("routing", f"last instance stored -> {label}", median(values), "s")
    if failed:
        out += ["", f"{failed} of {args.rounds} jobs failed; see the routing node's worker log"]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
