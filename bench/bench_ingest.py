"""Ingest benchmark: C-STORE of a 300-slice 256x256 CT into the tuned node vs Orthanc's defaults.

Run: ``.venv/bin/python bench/bench_ingest.py [--slices 300]``. Starts, side by side in one run, a
plain Orthanc with Debian's default settings and a real node (``ainode`` supervisor, tuned
configuration), then sends the same series with ``storescu`` and with ``ainode push`` and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeharness import free_port, start_node

from ainode.bench import record
from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series
from ainode.push import push_paths

SLICES = 300


def storescu(port: int, folder: Path, *, tuned: bool) -> float:
    env = {**os.environ}
    env.pop("TCP_NODELAY", None)
    args = ["storescu", "-aec", "ANY", "+sd", "+r"]
    if tuned:
        env["TCP_NODELAY"] = "1"
        args += ["--max-pdu", "131072"]
    started = time.perf_counter()
    subprocess.run(
        [*args, "127.0.0.1", str(port), str(folder)], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - started


def stow(base_url: str, folder: Path, auth: tuple[str, str] | None = None) -> float:
    """STOW-RS in requests of 50 instances, as a DICOMweb client would send a series."""
    client = DICOMwebClient(f"{base_url}/dicom-web")
    if auth:
        client._session.auth = auth
    paths = sorted(folder.iterdir())
    started = time.perf_counter()
    for first in range(0, len(paths), 50):
        client.store_instances([dcmread(p) for p in paths[first : first + 50]])
    return time.perf_counter() - started


def default_orthanc(workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, dicom = free_port(), free_port()
    workdir.mkdir(parents=True)
    config = workdir / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "HttpPort": http,
                "DicomPort": dicom,
                "StorageDirectory": str(workdir / "db"),
                "IndexDirectory": str(workdir / "db"),
                # Defaults otherwise; DICOMweb is loaded so STOW-RS can be compared too.
                "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    process = subprocess.Popen(
        ["/usr/sbin/Orthanc", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{http}/system", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    return process, http, dicom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=SLICES)
    slices = parser.parse_args().slices
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        phantom = make_phantom(Geometry(shape=(slices, 256, 256), spacing=(1.0, 0.8, 0.8)))
        folder = work / "series"
        write_series(phantom, folder, SeriesIds())
        rows: list[tuple[str, float]] = []

        process, http, dicom = default_orthanc(work / "default")
        try:
            rows.append(
                ("Orthanc defaults, storescu defaults", storescu(dicom, folder, tuned=False))
            )
            rows.append(("Orthanc defaults, STOW-RS", stow(f"http://127.0.0.1:{http}", folder)))
        finally:
            process.terminate()
            process.wait(30)

        node = start_node(work / "node")
        try:
            port = node.settings.dicom_port
            rows.append(
                ("AI node, storescu with TCP_NODELAY=1", storescu(port, folder, tuned=True))
            )
            report = push_paths([folder], host="127.0.0.1", port=port, called_aet="AINODE")
            rows.append(("AI node, ainode push", report.seconds))
            rows.append(("AI node, STOW-RS", stow(node.url, folder, node.auth)))
        finally:
            node.stop()

    baseline = rows[0][1]
    out = [
        f"Ingest of one {slices}-slice 256x256 CT series "
        f"({platform.machine()}, {os.cpu_count()} cores)",
        "",
        "| path | seconds | instances/s | speed-up vs defaults |",
        "|---|---|---|---|",
    ]
    for name, seconds in rows:
        out.append(
            f"| {name} | {seconds:.2f} | {slices / seconds:.0f} | {baseline / seconds:.1f}x |"
        )
        record(
            "ingest",
            f"{name}, {slices}x256x256",
            slices / seconds,
            "instances/s",
            baseline=slices / baseline,
        )
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
