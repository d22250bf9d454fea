"""The worker's compute runtime: measured at start, logged, answered to ``/ai/health``.

A worker with ``worker_device: cuda`` that finds no usable CUDA stops consuming the GPU pool's
queues (``ainode.gpu.*``) before it takes a job, and says why: a GPU job then waits for a worker
that can run it instead of crawling on a CPU. CUDA is probed in a child process
(``python -m ainode_worker.runtime --json``): touching CUDA in Celery's parent would break it in
the forked pool processes. Without ``cuda`` the probe runs in the background (the worker does not
wait for torch to import). For a CPU-only build of torch, and on a machine without an NVIDIA
driver, the probe does not import torch at all (1.3 s of CPU at every worker start): torch's
build then decides alone.

``python -m ainode_worker.runtime [--require-cuda]`` prints the same report; with
``--require-cuda`` it exits 1, printing the reason, when CUDA is not usable (``make gpu-check``).
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib.metadata
import importlib.util
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ainode.settings import Settings
from ainode.worker_runtime import RUNTIME_COMMAND, GpuDevice, WorkerRuntime, gpu_queues

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 300.0  # importing torch on a loaded machine is slow; never assume it is fast
# What NVIDIA's driver installs: the Linux driver's control device and /proc entry, WSL 2's GPU,
# and its user-space library (libcuda), there even before the kernel module is loaded.
NVIDIA_DRIVER_PATHS = (Path("/dev/nvidiactl"), Path("/proc/driver/nvidia"), Path("/dev/dxg"))
NVIDIA_DRIVER_LIBRARY = "cuda"


def measure() -> WorkerRuntime:
    """torch's CUDA state (with a real allocation), the GPUs and ONNX Runtime's providers."""
    runtime = _from_build() or _measure_torch()
    runtime.onnxruntime_package = _installed("onnxruntime-gpu") or _installed("onnxruntime")
    try:
        import onnxruntime as ort

        runtime.onnx_providers = list(ort.get_available_providers())
    except ImportError:
        runtime.warnings.append("onnxruntime is not installed")
    if runtime.cuda_usable and "CUDAExecutionProvider" not in runtime.onnx_providers:
        runtime.warnings.append(
            f"ONNX models run on the CPU: {runtime.onnxruntime_package or 'onnxruntime'} has "
            "no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
        )
    if _installed("onnxruntime-gpu") and _installed("onnxruntime"):
        runtime.warnings.append("both onnxruntime and onnxruntime-gpu are installed: keep one")
    return runtime


def _from_build() -> WorkerRuntime | None:
    """The report where torch's build decides alone, read from its ``version.py`` without
    importing torch: a CPU-only build, or a CUDA build on a machine with no NVIDIA driver (no
    CUDA build can see a device there). None where torch must be asked (a driver, ROCm)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    version_spec = importlib.util.spec_from_file_location("_ainode_torch_version", version_file)
    if version_spec is None or version_spec.loader is None:
        return None
    version = importlib.util.module_from_spec(version_spec)
    version_spec.loader.exec_module(version)  # plain assignments: no torch, no CUDA
    if getattr(version, "hip", None) is not None:
        return None
    runtime = WorkerRuntime(torch_version=version.__version__, torch_cuda_build=version.cuda)
    if version.cuda is None:
        runtime.cuda_reason = _cpu_only(version.__version__)
    elif _driver_installed():
        return None
    else:
        runtime.cuda_reason = (
            f"torch (CUDA {version.cuda}) sees no CUDA device: this machine has no NVIDIA "
            f"driver (none of {', '.join(str(path) for path in NVIDIA_DRIVER_PATHS)}, "
            f"lib{NVIDIA_DRIVER_LIBRARY})"
        )
    return runtime


def _driver_installed() -> bool:
    return any(path.exists() for path in NVIDIA_DRIVER_PATHS) or (
        ctypes.util.find_library(NVIDIA_DRIVER_LIBRARY) is not None
    )


def _cpu_only(torch_version: str) -> str:
    return f"torch {torch_version} is a CPU-only build"


def _measure_torch() -> WorkerRuntime:
    import torch

    runtime = WorkerRuntime(torch_version=torch.__version__, torch_cuda_build=torch.version.cuda)
    if torch.version.cuda is None:
        runtime.cuda_reason = _cpu_only(torch.__version__)
    elif not torch.cuda.is_available():
        runtime.cuda_reason = (
            f"torch (CUDA {torch.version.cuda}) sees no CUDA device (no GPU, no driver, or "
            "CUDA_VISIBLE_DEVICES hides it)"
        )
    else:
        try:
            torch.zeros(1, device="cuda").add_(1).item()  # a context and a kernel, for real
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                runtime.gpus.append(
                    GpuDevice(
                        index=index,
                        name=props.name,
                        total_mb=props.total_memory // (1024 * 1024),
                        capability=f"{props.major}.{props.minor}",
                    )
                )
            runtime.cuda_usable = True
            runtime.cuda_reason = f"torch {torch.__version__} runs on CUDA {torch.version.cuda}"
        except RuntimeError as error:  # driver too old for this build, device busy, ...
            runtime.cuda_reason = f"CUDA is present but unusable: {error}"
    return runtime


def _installed(distribution: str) -> str | None:
    try:
        return f"{distribution} {importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def measure_in_child() -> WorkerRuntime:
    """:func:`measure` in a fresh interpreter (see the module docstring for why)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ainode_worker.runtime", "--json"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
        return WorkerRuntime.model_validate_json(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError) as error:
        return WorkerRuntime(
            device="cpu", cuda_reason=f"the runtime probe failed: {type(error).__name__}"
        )


class RuntimeState:
    """This worker's report, filled at start; what the control command answers."""

    def __init__(self) -> None:
        self.report = WorkerRuntime()
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.report.model_dump(mode="json")

    def settle(self, settings: Settings, queues: list[str], measured: WorkerRuntime) -> list[str]:
        """Record the measurement; the GPU queues this worker must not consume."""
        refused: list[str] = []
        measured.device_setting = settings.worker_device
        if settings.worker_device == "cuda" and not measured.cuda_usable:
            refused = gpu_queues(queues)
            measured.refused_reason = (
                f"worker_device is cuda but {measured.cuda_reason or 'CUDA is not usable'}"
            )
        measured.device = (
            "cuda" if measured.cuda_usable and settings.worker_device != "cpu" else "cpu"
        )
        measured.queues = [queue for queue in queues if queue not in refused]
        measured.refused_queues = refused
        with self._lock:
            self.report = measured
        return refused


STATE = RuntimeState()


def install(app: Celery, settings: Settings) -> None:
    """Register the control command and the start-up check on the worker's Celery app."""
    from celery.signals import celeryd_after_setup
    from celery.worker.control import inspect_command

    @inspect_command(name=RUNTIME_COMMAND)  # type: ignore[untyped-decorator]
    def _answer(state: object) -> dict[str, Any]:
        return {"runtime": STATE.snapshot()}

    @celeryd_after_setup.connect(weak=False)  # type: ignore[untyped-decorator]
    def _after_setup(sender: str, instance: Any, **_: Any) -> None:
        queues = sorted(instance.app.amqp.queues.consume_from)

        def settle(measured: WorkerRuntime) -> list[str]:
            refused = STATE.settle(settings, queues, measured)
            log.info("worker %s runtime: %s", sender, STATE.report.summary())
            return refused

        if settings.worker_device == "cuda":
            refused = settle(measure_in_child())
            if refused:
                instance.app.amqp.queues.deselect(refused)
                log.error(
                    "worker %s does not take %s: %s",
                    sender,
                    ", ".join(refused),
                    STATE.report.refused_reason,
                )
        else:
            threading.Thread(
                target=lambda: settle(measure_in_child()), name="runtime-probe", daemon=True
            ).start()

    del _answer, _after_setup  # kept alive by Celery's registries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ainode_worker.runtime", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--require-cuda", action="store_true", help="exit 1 without CUDA")
    args = parser.parse_args(argv)
    runtime = measure()
    runtime.device = "cuda" if runtime.cuda_usable else "cpu"
    if args.json:
        sys.stdout.write(runtime.model_dump_json() + "\n")
    elif args.require_cuda:
        sys.stdout.write((runtime.summary() if runtime.cuda_usable else runtime.cuda_reason) + "\n")
    else:
        sys.stdout.write(json.dumps(runtime.model_dump(mode="json"), indent=2) + "\n")
    return 1 if args.require_cuda and not runtime.cuda_usable else 0


if __name__ == "__main__":
    sys.exit(main())
