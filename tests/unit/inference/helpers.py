"""Helpers of the inference tests: phantom volumes and Dice."""

from __future__ import annotations

import numpy as np
from ainode_worker.volume import Volume, volume_from_datasets

from ainode.phantoms import (
    BOX,
    SPHERE,
    Geometry,
    Phantom,
    SeriesIds,
    make_phantom,
    phantom_datasets,
)

UNSEEN_SEED = 424242  # the demo model never saw this phantom


def dice(predicted: np.ndarray, truth: np.ndarray, label: int) -> float:
    a, b = predicted == label, truth == label
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def phantom_volume(
    geometry: Geometry | None = None, seed: int = UNSEEN_SEED
) -> tuple[Phantom, Volume]:
    """A phantom with at least one sphere and one box (so both labels are scored)."""
    phantom = make_phantom(geometry or Geometry(), seed=seed, require=(SPHERE, BOX))
    return phantom, volume_from_datasets(list(phantom_datasets(phantom, SeriesIds())))
