"""Which device a model runs on, and how jobs share a GPU.

* No GPU (``torch.cuda.is_available()`` is false): everything runs on the CPU, automatically.
* Before a model is loaded onto a GPU, the worker waits (polling every ``poll_s``) until the GPU
  has the model's ``min_gpu_memory_mb`` free; after ``memory_wait_s`` it gives up with
  :class:`GpuMemoryError`. A model already loaded is not waited for: its memory is this
  process's own (PyTorch keeps it reserved, so the free figure no longer counts it).
* One GPU job at a time per GPU by default (``gpu_jobs_per_device``): a job holds one of the
  GPU's slots, exclusive file locks under ``<data_dir>/locks`` named by the GPU's UUID, while
  its models run. Worker processes sharing a data directory (Celery ``--concurrency`` > 1, or
  several workers on one machine) therefore take turns on a GPU, while their fetching and
  exporting still overlap. The locks are released by the kernel if a process dies.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ainode_worker.inference.errors import GpuMemoryError

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    """The GPU a process would use now."""

    uuid: str  # the same physical GPU has the same UUID in every process
    free_mb: int
    total_mb: int


Probe = Callable[[], GpuInfo | None]


def cuda_probe() -> GpuInfo | None:
    """This process's current CUDA device, or None when there is none."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or f"cuda{index}")
    return GpuInfo(uuid=uuid, free_mb=free // MB, total_mb=total // MB)


@dataclass
class DevicePolicy:
    """The device rules of one worker process; ``probe``, ``clock`` and ``sleep`` are
    injectable so the rules can be checked without a GPU."""

    memory_wait_s: float = 600.0
    poll_s: float = 2.0
    jobs_per_gpu: int = 1
    lock_dir: Path | None = None  # None: slots are counted within this process only
    probe: Probe = cuda_probe
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _local: dict[str, threading.Semaphore] = field(default_factory=dict, repr=False)
    _local_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.jobs_per_gpu < 1:
            raise ValueError("jobs_per_gpu must be at least 1")

    def device(self) -> torch.device:
        """CUDA when this process has a GPU, else the CPU."""
        return torch.device("cuda") if self.probe() is not None else torch.device("cpu")

    def wait_for_memory(self, min_free_mb: int, model: str) -> None:
        """Return once the GPU has ``min_free_mb`` free (at once when there is no GPU)."""
        deadline = self.clock() + self.memory_wait_s
        announced = False
        while True:
            info = self.probe()
            if info is None or info.free_mb >= min_free_mb:
                if announced:
                    log.info("GPU memory for %s is free now (%d MB)", model, min_free_mb)
                return
            now = self.clock()
            if now >= deadline:
                raise GpuMemoryError(
                    f"model {model} needs {min_free_mb} MB of free GPU memory; the GPU "
                    f"({info.total_mb} MB) still had only {info.free_mb} MB free after waiting "
                    f"{self.memory_wait_s:g} s (gpu_memory_wait_s)"
                )
            if not announced:
                log.info(
                    "model %s needs %d MB of free GPU memory, %d MB free: waiting up to %g s",
                    model,
                    min_free_mb,
                    info.free_mb,
                    self.memory_wait_s,
                )
                announced = True
            self.sleep(max(0.0, min(self.poll_s, deadline - now)))

    @contextmanager
    def gpu_slot(self, device: torch.device) -> Iterator[None]:
        """Hold one of the GPU's job slots for the block; no-op on the CPU."""
        info = self.probe() if device.type == "cuda" else None
        if info is None:
            yield
            return
        name = re.sub(r"[^A-Za-z0-9-]", "_", info.uuid)[:80]
        with self._local_lock:
            local = self._local.setdefault(name, threading.Semaphore(self.jobs_per_gpu))
        with local:
            if self.lock_dir is None:
                yield
                return
            descriptor = self._lock_file_slot(name)
            try:
                yield
            finally:
                os.close(descriptor)  # releases the lock

    def _lock_file_slot(self, name: str) -> int:
        """An open descriptor holding one slot's exclusive lock; waits while all are held."""
        assert self.lock_dir is not None
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            for slot in range(self.jobs_per_gpu):
                path = self.lock_dir / f"gpu-{name}.{slot}.lock"
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(descriptor)
                    continue
                return descriptor
            if not announced:
                log.info("GPU %s is busy with another job: waiting for it", name)
                announced = True
            self.sleep(min(self.poll_s, 0.2))
