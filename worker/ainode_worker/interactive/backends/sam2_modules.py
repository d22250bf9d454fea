"""SAM 2's image encoder and prompt decoder as two plain modules with array-only interfaces.

The same two modules serve the PyTorch backend and the ONNX export
(``scripts/build_test_sam_models.py``), so both runtimes compute exactly the same thing and
the exported files have the interface SAM 2 ONNX deployments (samexporter, Triton model
repositories) use:

* encoder: ``image`` [1, 3, S, S] (resized, ImageNet-normalised) ->
  ``high_res_feats_0`` [1, 32, S/4, S/4], ``high_res_feats_1`` [1, 64, S/8, S/8],
  ``image_embed`` [1, 256, S/16, S/16];
* decoder: those three + ``point_coords`` [1, N, 2] (model-input pixels),
  ``point_labels`` [1, N] (1 positive, 0 negative, 2/3 box corners, -1 padding),
  ``mask_input`` [1, 1, S/4, S/4] (logits), ``has_mask_input`` [1], ``orig_im_size`` [2]
  (height, width) -> ``masks`` [1, 1, H, W] and ``low_res_masks`` [1, 1, S/4, S/4] (logits),
  ``iou_predictions`` [1, 1], ``object_score_logits`` [1, 1].

The decoder always returns one mask: SAM 2's single-mask output, falling back to the best of
its three multimask outputs when that mask is unstable (as ``build_sam2`` configures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from torch import nn

ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embed")
DECODER_INPUTS = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks", "object_score_logits")
_LOGIT_LIMIT = 32.0


class Sam2ImageEncoder(nn.Module):
    def __init__(self, model: SAM2Base) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # forward_image already applies the decoder's conv_s0/conv_s1 to the two finest levels.
        features = self.model.forward_image(image)["backbone_fpn"]
        embed = features[-1]
        if self.model.directly_add_no_mem_embed:
            # What SAM 2 does for a frame without memory (a single image).
            embed = embed + self.model.no_mem_embed.reshape(1, -1, 1, 1)
        return features[0], features[1], embed


class Sam2PromptDecoder(nn.Module):
    def __init__(self, model: SAM2Base) -> None:
        super().__init__()
        self.model = model
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=True)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = (
            has_mask * self.prompt_encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask
        )
        low_res, iou, _, object_score = self.mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        low_res = torch.clamp(low_res, -_LOGIT_LIMIT, _LOGIT_LIMIT)
        size = orig_im_size.to(torch.int64)
        # Tensor sizes (not ints) keep the output size an input of the exported ONNX graph.
        masks = F.interpolate(
            low_res,
            size=(size[0], size[1]),  # type: ignore[arg-type]
            mode="bilinear",
            align_corners=False,
        )
        return masks, iou, low_res, object_score
