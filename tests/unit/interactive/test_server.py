"""``python -m ainode_worker.interactive`` serves on the given port with the given models file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from nodeharness import free_port


def test_module_entry_point_serves_health(tmp_path: Path) -> None:
    models = tmp_path / "interactive.yaml"
    models.write_text("models:\n  grow:\n    kind: regiongrow\nmax_concurrent: 3\n")
    port = free_port()
    env = {**os.environ, "AINODE_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ainode_worker.interactive",
            "--port",
            str(port),
            "--models",
            str(models),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        body = health.json()
        assert [m["name"] for m in body["models"]] == ["grow"]
        assert body["max_concurrent"] == 3
    finally:
        process.terminate()
        process.wait(timeout=20)
