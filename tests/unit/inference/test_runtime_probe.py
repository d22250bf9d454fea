"""The worker's runtime probe asks torch only where an NVIDIA driver exists: elsewhere it reads
torch's build from its version file and reports the same facts without importing torch. The
driver's files are replaced by one the test creates or not; its library by one nobody has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ainode.worker_runtime import WorkerRuntime

PROBE = """
import sys
from pathlib import Path
from ainode_worker import runtime
runtime.NVIDIA_DRIVER_PATHS = (Path(sys.argv[1]),)
runtime.NVIDIA_DRIVER_LIBRARY = "ainode-no-such-library"
print(runtime.measure().model_dump_json())
print("torch" in sys.modules)
"""


def _probe(driver_path: Path) -> tuple[WorkerRuntime, bool]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(driver_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report, imported = done.stdout.strip().splitlines()[-2:]
    return WorkerRuntime.model_validate_json(report), imported == "True"


@pytest.mark.parametrize("driver", [False, True], ids=["no-driver", "driver"])
def test_the_probe_imports_torch_only_where_a_driver_is(tmp_path: Path, driver: bool) -> None:
    driver_path = tmp_path / "nvidiactl"
    if driver:
        driver_path.touch()
    report, imported_torch = _probe(driver_path)
    assert imported_torch is driver
    assert report.torch_version == torch.__version__
    assert report.torch_cuda_build == torch.version.cuda
    assert "CPUExecutionProvider" in report.onnx_providers
    if not driver:
        assert not report.cuda_usable
        assert "no NVIDIA driver" in report.cuda_reason or "CPU-only" in report.cuda_reason
    else:
        assert "no NVIDIA driver" not in report.cuda_reason
