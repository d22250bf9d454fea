"""ONNX models in ONNX Runtime, with the execution provider chosen at run time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ainode.registry import InferenceParams, ModelSpec, OnnxOptions
from ainode_worker.inference.errors import (
    BackendUnavailableError,
    InputMismatchError,
    ModelLoadError,
    WeightsMissingError,
)
from ainode_worker.inference.prediction import Prediction, label_dtype
from ainode_worker.inference.sliding_window import Patch, sliding_window, softmax
from ainode_worker.volume import Volume

log = logging.getLogger(__name__)


def choose_providers(device: torch.device) -> list[str]:
    """CUDA when ONNX Runtime offers it and the worker runs on a GPU, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    elif device.type == "cuda":
        log.warning(
            "the worker has a GPU but ONNX Runtime offers only %s: ONNX models run on the CPU "
            "(install onnxruntime-gpu instead of onnxruntime)",
            available,
        )
    log.info("ONNX providers available: %s; using: %s", available, providers)
    return providers


class OnnxBackend:
    """Registry kind ``onnx``: input ``[1, channel, s, r, c]``, output ``[1, class, s, r, c]``."""

    def __init__(self) -> None:
        self._session: object | None = None
        self._input = ""
        self._channels = 0
        self._patch: Patch | None = None
        self._options = OnnxOptions()
        self._top = 1
        self.providers: list[str] = []

    def load(self, spec: ModelSpec, device: torch.device) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise BackendUnavailableError("onnxruntime is not installed in the worker") from error
        if spec.weights is None or not Path(spec.weights).is_file():
            raise WeightsMissingError(f"ONNX model file not found: {spec.weights}")
        self._options = spec.onnx or OnnxOptions()
        self.providers = choose_providers(device)
        try:
            session = ort.InferenceSession(spec.weights, providers=self.providers)
        except (RuntimeError, ValueError) as error:  # ORT raises its own RuntimeError subclasses
            raise ModelLoadError(f"ONNX model {spec.weights} does not load: {error}") from error
        wanted = self.providers[0]
        self.providers = list(session.get_providers())
        if self.providers[0] != wanted:  # e.g. the CUDA provider failed to load its libraries
            log.warning(
                "ONNX model %s asked for %s but runs on %s (ONNX Runtime fell back)",
                spec.id,
                wanted,
                self.providers[0],
            )
        log.info("ONNX model %s runs on %s", spec.id, self.providers[0])
        model_input = session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 5:
            raise ModelLoadError(f"ONNX model input must be [1, C, S, R, C], got {shape}")
        if not isinstance(shape[1], int):
            raise ModelLoadError("the ONNX model's channel dimension must be fixed")
        self._input = model_input.name
        self._channels = int(shape[1])
        spatial = shape[2:]
        if all(isinstance(d, int) for d in spatial):
            self._patch = (int(spatial[0]), int(spatial[1]), int(spatial[2]))
        else:
            self._patch = self._options.patch_size
        self._top = max(label.value for label in spec.labels)
        self._session = session

    def predict(self, channels: Sequence[Volume], params: InferenceParams) -> Prediction:
        session = self._session
        if session is None:
            raise RuntimeError("predict() before load()")
        if len(channels) != self._channels:
            raise InputMismatchError(
                f"the ONNX model takes {self._channels} channel(s), {len(channels)} given"
            )
        image = np.stack([self._normalise(c.array) for c in channels]).astype(np.float32)

        def run(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            output = np.asarray(
                session.run(None, {self._input: batch})[0],  # type: ignore[attr-defined]
                dtype=np.float32,
            )
            return output if self._options.output == "probabilities" else softmax(output)

        patch = self._patch or channels[0].shape
        probabilities = sliding_window(image, patch, params.tile_step_size, run)
        if probabilities.shape[0] < self._top + 1:
            raise ModelLoadError(
                f"the ONNX model outputs {probabilities.shape[0]} classes; labels go up to "
                f"{self._top}"
            )
        labels = probabilities.argmax(axis=0).astype(label_dtype(self._top))
        return Prediction(
            labels=labels, probabilities=probabilities if params.needs_probabilities else None
        )

    def _normalise(self, array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        options = self._options
        if options.clip is not None:
            array = np.clip(array, options.clip[0], options.clip[1])
        result: npt.NDArray[np.float32] = ((array - options.mean) / options.std).astype(np.float32)
        return result
