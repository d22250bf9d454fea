"""Sliding-window inference for networks whose input patch is smaller than the volume.

Patches overlap; each patch's class probabilities are weighted by a Gaussian centred on the
patch (as nnU-Net does), because a convolutional network is least reliable at patch borders.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import ndimage

Patch = tuple[int, int, int]
PatchRunner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


@lru_cache(maxsize=8)
def gaussian_weights(patch: Patch, sigma_scale: float = 1.0 / 8) -> npt.NDArray[np.float32]:
    """Weights peaking (1.0) at the patch centre, never zero at its border."""
    impulse = np.zeros(patch, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch)] = 1.0
    weights = ndimage.gaussian_filter(
        impulse, sigma=[p * sigma_scale for p in patch], mode="constant", cval=0.0
    )
    weights /= weights.max()
    floor = weights[weights > 0].min()
    weights[weights == 0] = floor
    result: npt.NDArray[np.float32] = weights.astype(np.float32)
    return result


def window_starts(size: int, patch: int, step_fraction: float) -> list[int]:
    """Evenly spread start indices so that windows of ``patch`` cover ``size``."""
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / (patch * step_fraction)) + 1
    step = (size - patch) / (count - 1)
    return [round(i * step) for i in range(count)]


def sliding_window(
    image: npt.NDArray[np.float32],
    patch: Patch,
    step_fraction: float,
    run: PatchRunner,
) -> npt.NDArray[np.float32]:
    """Class probabilities ``[class, slice, row, column]`` of ``image`` ``[channel, s, r, c]``.

    ``run`` maps one batch ``[1, channel, *patch]`` to probabilities ``[1, class, *patch]``.
    A volume smaller than the patch is padded (edge values) and the result cropped back.
    """
    shape = image.shape[1:]
    padding = [(0, 0)] + [(0, max(0, p - s)) for s, p in zip(shape, patch, strict=True)]
    padded = np.pad(image, padding, mode="edge") if any(p[1] for p in padding) else image
    full = padded.shape[1:]
    weights = gaussian_weights(patch)
    total: npt.NDArray[np.float32] | None = None
    norm = np.zeros(full, dtype=np.float32)
    starts = [window_starts(s, p, step_fraction) for s, p in zip(full, patch, strict=True)]
    for z, y, x in itertools.product(*starts):
        box = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        probabilities = run(np.ascontiguousarray(padded[(slice(None), *box)])[None])[0]
        if total is None:
            total = np.zeros((probabilities.shape[0], *full), dtype=np.float32)
        total[(slice(None), *box)] += probabilities * weights
        norm[box] += weights
    assert total is not None
    total /= norm
    return total[:, : shape[0], : shape[1], : shape[2]]


def softmax(logits: npt.NDArray[np.float32], axis: int = 1) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float32] = (exp / exp.sum(axis=axis, keepdims=True)).astype(np.float32)
    return result
