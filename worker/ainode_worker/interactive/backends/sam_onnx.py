"""SAM-family encoder/decoder pairs exported to ONNX, run with ONNX Runtime.

Two export layouts are in use and both are read, by the names of the decoder's inputs:

* SAM 2 (samexporter, Triton repositories, ``scripts/build_test_sam_models.py``): the encoder
  gives ``high_res_feats_0``, ``high_res_feats_1`` and ``image_embed``; the decoder takes them
  with the prompts. Input resized to a square (stretched); the decoder adds SAM's padding
  point itself.
* SAM 1 (``segment_anything.utils.onnx``): the encoder gives one ``image_embeddings``; the
  decoder takes it with the prompts and ``orig_im_size``. Input resized on its longest side and
  zero-padded; the caller appends the padding point (0, 0, label -1) when there is no box.

The decoder's low-resolution logits (``low_res_masks``, or ``masks`` when they are not
upsampled) are what the backend uses, so it maps masks back to the slice itself and can feed
them to the next slice. CUDA is used when ONNX Runtime offers it, else the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..cache import Computed
from ..errors import ModelUnavailableError
from .sam_slices import Decoded, Float2D, LoadedOnce, ResizeMode

log = logging.getLogger(__name__)

Family = Literal["auto", "sam1", "sam2"]
_SAM2_FEATURES = ("image_embed", "high_res_feats_0", "high_res_feats_1")
_SAM1_FEATURE = "image_embeddings"


class SamOnnxModel(LoadedOnce):
    def __init__(
        self,
        encoder: Path,
        decoder: Path,
        *,
        family: Family = "auto",
        providers: list[str] | None = None,
        threads: int = 0,
    ) -> None:
        super().__init__()
        self.encoder_path = encoder
        self.decoder_path = decoder
        self.family = family
        self.providers = providers
        self.threads = threads
        self.resize: ResizeMode = "stretch"
        self._feature_names: tuple[str, ...] = ()
        self._decoder_inputs: set[str] = set()
        self._decoder_outputs: list[str] = []
        self._pads_points = False

    def _load(self) -> None:
        for path in (self.encoder_path, self.decoder_path):
            if not path.is_file():
                raise ModelUnavailableError(
                    f"ONNX file {path} does not exist; export the model there or remove it "
                    "from the interactive configuration"
                )
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = self.providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            encoder = ort.InferenceSession(str(self.encoder_path), options, providers=providers)
            decoder = ort.InferenceSession(str(self.decoder_path), options, providers=providers)
        except (RuntimeError, ValueError) as error:  # ORT raises its own Fail/InvalidGraph
            raise ModelUnavailableError(
                f"ONNX Runtime cannot load {self.encoder_path.name}/{self.decoder_path.name}: "
                f"{error}"
            ) from error
        self._configure(encoder, decoder)
        self._encoder, self._decoder = encoder, decoder
        log.info(
            "SAM ONNX (%s) loaded: input %d px, providers %s",
            "SAM 2" if self._feature_names == _SAM2_FEATURES else "SAM 1",
            self.image_size,
            decoder.get_providers(),
        )

    def _configure(self, encoder: Any, decoder: Any) -> None:
        inputs = {i.name: i for i in decoder.get_inputs()}
        self._decoder_inputs = set(inputs)
        self._decoder_outputs = [o.name for o in decoder.get_outputs()]
        family = self.family
        if family == "auto":
            family = "sam2" if set(_SAM2_FEATURES) <= set(inputs) else "sam1"
        missing = {"point_coords", "point_labels", "mask_input", "has_mask_input"} - set(inputs)
        if missing:
            raise ModelUnavailableError(
                f"{self.decoder_path.name} is not a SAM decoder: it lacks {sorted(missing)}"
            )
        self._feature_names = _SAM2_FEATURES if family == "sam2" else (_SAM1_FEATURE,)
        absent = [n for n in self._feature_names if n not in inputs]
        if absent:
            raise ModelUnavailableError(
                f"{self.decoder_path.name} lacks the {family} feature inputs {absent}"
            )
        self.resize = "stretch" if family == "sam2" else "longest_side"
        self._pads_points = family == "sam2"
        shape = encoder.get_inputs()[0].shape
        if len(shape) != 4 or not isinstance(shape[-1], int):
            raise ModelUnavailableError(
                f"{self.encoder_path.name} must take a fixed-size [1, 3, S, S] image, not {shape}"
            )
        self.image_size = int(shape[-1])
        mask_shape = inputs["mask_input"].shape
        self.mask_size = (
            int(mask_shape[-1]) if isinstance(mask_shape[-1], int) else (self.image_size // 4)
        )

    def encode(self, image: npt.NDArray[np.float32]) -> Computed:
        encoder_input = self._encoder.get_inputs()[0].name
        names = [o.name for o in self._encoder.get_outputs()]
        values = self._encoder.run(None, {encoder_input: image})
        if len(values) == 1:  # a SAM 1 encoder whose output has another name
            names = [self._feature_names[0]]
        features = {n: v for n, v in zip(names, values, strict=True) if n in self._feature_names}
        if set(features) != set(self._feature_names):
            raise ModelUnavailableError(
                f"{self.encoder_path.name} gives {names}, the decoder needs "
                f"{list(self._feature_names)}"
            )
        return Computed(features, sum(int(v.nbytes) for v in features.values()))

    def decode(
        self,
        features: Any,
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
        mask_input: Float2D | None,
    ) -> Decoded:
        if not self._pads_points and not (labels >= 2).any():
            coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
            labels = np.concatenate([labels, np.array([-1.0], np.float32)])
        feeds: dict[str, npt.NDArray[Any]] = dict(features)
        feeds["point_coords"] = coords[None].astype(np.float32)
        feeds["point_labels"] = labels[None].astype(np.float32)
        if mask_input is None:
            feeds["mask_input"] = np.zeros((1, 1, self.mask_size, self.mask_size), np.float32)
            feeds["has_mask_input"] = np.zeros(1, np.float32)
        else:
            feeds["mask_input"] = mask_input[None, None].astype(np.float32)
            feeds["has_mask_input"] = np.ones(1, np.float32)
        if "orig_im_size" in self._decoder_inputs:
            # Ask for no upsampling: the backend maps low-resolution logits itself.
            feeds["orig_im_size"] = np.array([self.mask_size, self.mask_size], np.float32)
        outputs = dict(zip(self._decoder_outputs, self._decoder.run(None, feeds), strict=True))
        low_res = outputs.get("low_res_masks", outputs.get("masks"))
        if low_res is None:
            raise ModelUnavailableError(f"{self.decoder_path.name} gives no masks")
        scores = np.asarray(outputs.get("iou_predictions", np.ones((1, low_res.shape[1]))))
        best = int(np.argmax(scores.reshape(-1)))  # multimask exports: keep the best mask
        object_score = outputs.get("object_score_logits")
        return Decoded(
            low_res=np.asarray(low_res[0, best], dtype=np.float32),
            score=float(scores.reshape(-1)[best]),
            object_score=None if object_score is None else float(object_score.reshape(-1)[0]),
        )
