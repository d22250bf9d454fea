"""Which device to run on: CUDA when present, CPU otherwise, everywhere."""

from __future__ import annotations

import logging

import torch

from ainode_worker.inference.errors import GpuMemoryError

log = logging.getLogger(__name__)


def select_device(min_free_mb: int = 0) -> torch.device:
    """CUDA if available (raising :class:`GpuMemoryError` when it has less than
    ``min_free_mb`` free), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    free, _total = torch.cuda.mem_get_info()
    free_mb = free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise GpuMemoryError(
            f"the model needs {min_free_mb} MB of free GPU memory, {free_mb} MB are free now"
        )
    return torch.device("cuda")
