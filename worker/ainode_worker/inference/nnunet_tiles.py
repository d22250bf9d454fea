"""nnU-Net's predictor with its sliding-window tiles run a few at a time on the CPU.

nnU-Net sends one tile per forward pass. For one small 3D tile PyTorch leaves oneDNN aside (its
heuristic, batch x channels x depth x height <= 20480, is made for 2D) and runs the slow
im2col convolution: the demo model's 32x64x64 tiles cost 3x more alone than in a batch of four
(a 315x201x201 mm phantom, 128 tiles, one thread, load 6-7: 70-86 s alone, 25-26 s in fours;
eight or sixteen at once are no faster). The tiles, their Gaussian weights and their sum are
nnU-Net's own (the network normalises each tile on its own, so a batch changes no tile's
output); only how many go through the network at once differs. Large tiles (TotalSegmentator's
128³) stay one at a time, so memory stays what nnU-Net would use; on a GPU nothing changes.
Imports nnU-Net: load this module lazily.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

# Voxels of input sent through the network at once on the CPU: four of the demo model's tiles.
CPU_BATCH_VOXELS = 4 * 32 * 64 * 64


class TileBatchingPredictor(nnUNetPredictor):  # type: ignore[misc]
    """:class:`nnUNetPredictor` that batches sliding-window tiles on the CPU (see the module)."""

    def tiles_per_batch(self) -> int:
        if self.device.type != "cpu":
            return 1
        patch: list[int] = self.configuration_manager.patch_size
        return max(1, CPU_BATCH_VOXELS // math.prod(patch))

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(
        self, data: torch.Tensor, slicers: list[tuple[Any, ...]], do_on_device: bool = True
    ) -> torch.Tensor:
        batch = self.tiles_per_batch()
        if batch == 1:
            stock: torch.Tensor = super()._internal_predict_sliding_window_return_logits(
                data, slicers, do_on_device
            )
            return stock
        results_device = self.device if do_on_device else torch.device("cpu")
        data = data.to(results_device)
        logits = torch.zeros(
            (self.label_manager.num_segmentation_heads, *data.shape[1:]),
            dtype=torch.half,
            device=results_device,
        )
        weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
        gaussian: torch.Tensor | float = (
            compute_gaussian(
                tuple(self.configuration_manager.patch_size),
                sigma_scale=1.0 / 8,
                value_scaling_factor=10,
                device=results_device,
            )
            if self.use_gaussian
            else 1.0
        )
        for start in range(0, len(slicers), batch):
            group = slicers[start : start + batch]
            tiles = torch.stack([data[s] for s in group]).to(self.device)
            predictions = self._internal_maybe_mirror_and_predict(tiles).to(results_device)
            for prediction, slicer in zip(predictions, group, strict=True):
                if self.use_gaussian:
                    prediction *= gaussian
                logits[slicer] += prediction
                weights[slicer[1:]] += gaussian
        torch.div(logits, weights, out=logits)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError("nnU-Net's summed tiles overflowed (inf in the logits)")
        return logits
