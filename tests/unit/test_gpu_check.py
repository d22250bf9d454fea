"""``make gpu-check``'s script on this machine, which has no CUDA GPU: it says so and exits 0
without writing results."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from ainode.settings import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run it for real")
def test_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS-gpu.md"
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "gpu_check.sh")],
        env={**os.environ, "GPU_CHECK_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no usable CUDA GPU here" in done.stdout
    assert "sees no CUDA device" in done.stdout
    assert not output.exists()
