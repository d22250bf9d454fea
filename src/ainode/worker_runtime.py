"""What a worker found at start: its GPUs, ONNX Runtime's providers, torch's CUDA state.

The worker measures it (:mod:`ainode_worker.runtime`) and answers it to the Celery control
command :data:`RUNTIME_COMMAND`; ``/ai/health`` and ``ainode status`` ask for it here. Light (no
torch): the Orthanc plugin and the CLI import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError

from ainode.queues import QUEUE_PREFIX, Pool, is_delivery_queue

RUNTIME_COMMAND = "ainode_runtime"
GPU_QUEUE_PREFIX = f"{QUEUE_PREFIX}.{Pool.GPU.value}."


class GpuDevice(BaseModel):
    index: int
    name: str
    total_mb: int
    capability: str = ""


class WorkerRuntime(BaseModel):
    """One worker's compute runtime, as measured in a fresh process at its start."""

    device_setting: Literal["auto", "cpu", "cuda"] = "auto"
    device: Literal["cuda", "cpu", "unknown"] = Field(
        default="unknown", description="where this worker runs models"
    )
    torch_version: str = ""
    torch_cuda_build: str | None = Field(default=None, description="torch.version.cuda")
    cuda_usable: bool = False
    cuda_reason: str = Field(default="", description="why CUDA is or is not usable")
    gpus: list[GpuDevice] = Field(default_factory=list)
    onnxruntime_package: str | None = Field(
        default=None, description="onnxruntime or onnxruntime-gpu; None: not installed"
    )
    onnx_providers: list[str] = Field(default_factory=list)
    queues: list[str] = Field(default_factory=list, description="queues it consumes")
    refused_queues: list[str] = Field(default_factory=list)
    refused_reason: str | None = None
    warnings: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for ``ainode status`` and logs."""
        if self.device == "cuda":
            where = "CUDA: " + ", ".join(f"{g.name} ({g.total_mb} MB)" for g in self.gpus)
        elif self.device == "cpu":
            where = f"CPU ({self.cuda_reason})" if self.cuda_reason else "CPU"
        else:
            where = "runtime not measured yet"
        parts = [where]
        if self.onnx_providers:
            parts.append(
                "ONNX " + "/".join(p.removesuffix("ExecutionProvider") for p in self.onnx_providers)
            )
        if self.refused_queues:
            parts.append(f"refuses {', '.join(self.refused_queues)}: {self.refused_reason}")
        parts.extend(self.warnings)
        return "; ".join(parts)


def gpu_queues(queues: Sequence[str]) -> list[str]:
    """The GPU pool's queues among ``queues``."""
    return [queue for queue in queues if queue.startswith(GPU_QUEUE_PREFIX)]


def worker_runtimes(app: Celery, timeout_s: float = 1.0) -> dict[str, WorkerRuntime | None]:
    """Each answering worker's runtime (None for a worker that cannot tell); {} when the broker
    is away. Answering at all is what a ping proves, so this is a ping too."""
    try:
        replies: list[dict[str, Any]] = (
            app.control.broadcast(RUNTIME_COMMAND, reply=True, timeout=timeout_s) or []
        )
    except (OSError, OperationalError, RedisError):
        return {}
    found: dict[str, WorkerRuntime | None] = {}
    for reply in replies:
        for name, answer in reply.items():
            try:
                found[name] = WorkerRuntime.model_validate(answer.get("runtime"))
            except (ValidationError, AttributeError):
                found[name] = None
    return dict(sorted(found.items()))


def job_workers(runtimes: Mapping[str, WorkerRuntime | None]) -> list[str]:
    """The workers that run jobs: all but those serving only delivery queues (a node whose
    only live worker delivers results runs no job). One whose queues are not known counts."""
    return [
        name
        for name, runtime in runtimes.items()
        if runtime is None
        or not runtime.queues
        or not all(is_delivery_queue(q) for q in runtime.queues)
    ]
