"""SAM 2 / 2.1 in PyTorch from a local checkpoint (``{"model": state_dict}``) and a config.

Weights are loaded through ``sam2.build_sam.build_sam2`` (the package's own strict loader) on
first use, so the service starts at once and a missing checkpoint only disables this model.
Slice embeddings stay on the GPU while it has room (``gpu_min_free_bytes`` left after
storing them); otherwise they are moved to host memory, where the session store's budget
governs them, and copied back for each decode.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..cache import Computed
from ..errors import ModelUnavailableError
from .sam_slices import Decoded, Float2D, LoadedOnce, ResizeMode

log = logging.getLogger(__name__)


class Sam2TorchModel(LoadedOnce):
    resize: ResizeMode = "stretch"

    def __init__(
        self,
        checkpoint: Path,
        config: str,
        hydra_overrides: list[str] | None = None,
        *,
        device: str = "auto",
        cache_dtype: str = "float32",
        gpu_min_free_bytes: int = 2 << 30,
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.config = config
        self.hydra_overrides = list(hydra_overrides or [])
        self.device_name = device
        self.cache_dtype = cache_dtype
        self.gpu_min_free_bytes = gpu_min_free_bytes
        self._device: Any = None

    def _load(self) -> None:
        if not self.checkpoint.is_file():
            raise ModelUnavailableError(
                f"SAM 2 checkpoint {self.checkpoint} does not exist; copy the weights there "
                "or remove the model from the interactive configuration"
            )
        import torch
        from sam2.build_sam import build_sam2

        from .sam2_modules import Sam2ImageEncoder, Sam2PromptDecoder

        device = self.device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            model = build_sam2(
                self.config,
                str(self.checkpoint),
                device=device,
                hydra_overrides_extra=self.hydra_overrides,
            )
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            raise ModelUnavailableError(
                f"SAM 2 weights {self.checkpoint.name} do not load with config "
                f"{self.config}: {type(error).__name__}: {error}"
            ) from error
        self._device = torch.device(device)
        self._encoder = Sam2ImageEncoder(model).eval()
        self._decoder = Sam2PromptDecoder(model).eval()
        self.image_size = int(model.image_size)
        self.mask_size = self.image_size // 4
        log.info(
            "SAM 2 loaded from %s (%s, input %d px) on %s",
            self.checkpoint.name,
            self.config,
            self.image_size,
            device,
        )

    def encode(self, image: npt.NDArray[np.float32]) -> Computed:
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(image).to(self._device)
            features = self._encoder(tensor)
        dtype = getattr(torch, self.cache_dtype)
        features = tuple(f.to(dtype) for f in features)
        nbytes = sum(int(f.numel() * f.element_size()) for f in features)
        on_gpu = self._device.type == "cuda" and self._gpu_has_room(nbytes)
        if not on_gpu:
            features = tuple(f.cpu() for f in features)
        return Computed(features, nbytes, on_gpu)

    def decode(
        self,
        features: Any,
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
        mask_input: Float2D | None,
    ) -> Decoded:
        import torch

        device = self._device
        with torch.inference_mode():
            hr0, hr1, embed = (f.to(device, torch.float32) for f in features)
            if mask_input is None:
                mask = torch.zeros((1, 1, self.mask_size, self.mask_size), device=device)
                has_mask = torch.zeros(1, device=device)
            else:
                mask = torch.from_numpy(np.ascontiguousarray(mask_input))[None, None].to(device)
                has_mask = torch.ones(1, device=device)
            size = torch.tensor([self.mask_size, self.mask_size], device=device)
            _, iou, low_res, object_score = self._decoder(
                embed,
                hr0,
                hr1,
                torch.from_numpy(coords)[None].to(device),
                torch.from_numpy(labels)[None].to(device),
                mask,
                has_mask,
                size,
            )
            return Decoded(
                low_res=low_res[0, 0].float().cpu().numpy(),
                score=float(iou.reshape(-1)[0]),
                object_score=float(object_score.reshape(-1)[0]),
            )

    def _gpu_has_room(self, nbytes: int) -> bool:
        import torch

        free, _ = torch.cuda.mem_get_info(self._device)
        return bool(free - nbytes > self.gpu_min_free_bytes)
