"""nnU-Net v2 models, through nnU-Net's own predictor so preprocessing and resampling are
exactly those the model was trained with."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ainode.registry import InferenceParams, LabelSpec, ModelSpec, nnunet_model_folder
from ainode_worker.inference.errors import (
    InputMismatchError,
    ModelLoadError,
    WeightsMissingError,
)
from ainode_worker.inference.prediction import Prediction, label_dtype
from ainode_worker.volume import Volume

log = logging.getLogger(__name__)


def model_folder(weights: Path) -> Path:
    """The nnU-Net model folder, or :class:`WeightsMissingError` naming where it looked."""
    try:
        return nnunet_model_folder(weights)
    except FileNotFoundError as error:
        raise WeightsMissingError(str(error)) from error


class NnUNetPredictorModel:
    """One nnU-Net model folder loaded with given folds and checkpoint."""

    def __init__(
        self,
        folder: Path,
        folds: Sequence[int | str],
        checkpoint: str,
        device: torch.device,
        tile_step_size: float = 0.5,
    ) -> None:
        from ainode_worker.inference.nnunet_tiles import TileBatchingPredictor

        for fold in folds:
            path = folder / f"fold_{fold}" / checkpoint
            if not path.is_file():
                raise WeightsMissingError(f"nnU-Net checkpoint not found: {path}")
        self.folder = folder
        self.predictor = TileBatchingPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=False,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        try:
            self.predictor.initialize_from_trained_model_folder(
                str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint
            )
        except (KeyError, RuntimeError, ValueError, OSError) as error:
            raise ModelLoadError(f"nnU-Net model in {folder} does not load: {error}") from error
        dataset: dict[str, Any] = self.predictor.dataset_json
        self.channels = len(dataset.get("channel_names", dataset.get("modality", {"0": ""})))
        self.label_names: dict[str, int] = {
            str(name): int(value)
            for name, value in dataset["labels"].items()
            if isinstance(value, int)
        }

    def predict(
        self, channels: Sequence[Volume], *, tta: bool, tile_step_size: float, probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """nnU-Net's label map (its own values) and, if asked, its class probabilities."""
        if len(channels) != self.channels:
            raise InputMismatchError(
                f"the nnU-Net model in {self.folder.name} takes {self.channels} channel(s), "
                f"{len(channels)} given"
            )
        image = np.stack([c.array for c in channels]).astype(np.float32, copy=False)
        self.predictor.use_mirroring = tta
        self.predictor.tile_step_size = tile_step_size
        properties = {"spacing": [float(s) for s in channels[0].spacing]}
        if probabilities:
            labels, probs = self.predictor.predict_single_npy_array(
                image, properties, None, None, True
            )
            return np.asarray(labels), np.asarray(probs, dtype=np.float32)
        labels = self.predictor.predict_single_npy_array(image, properties, None, None, False)
        return np.asarray(labels), None


class NnUNetBackend:
    """Registry kind ``nnunet``: the model's label values are the registry's label values."""

    def __init__(self) -> None:
        self._model: NnUNetPredictorModel | None = None
        self._labels: list[LabelSpec] = []

    def load(self, spec: ModelSpec, device: torch.device) -> None:
        if spec.weights is None:
            raise WeightsMissingError(f"model {spec.id} names no weights")
        folder = model_folder(Path(spec.weights))
        self._model = NnUNetPredictorModel(
            folder,
            spec.defaults.folds,
            spec.defaults.checkpoint_name,
            device,
            spec.defaults.tile_step_size,
        )
        unknown = {label.value for label in spec.labels} - set(self._model.label_names.values())
        if unknown:
            raise ModelLoadError(
                f"registry labels {sorted(unknown)} of {spec.id} are not outputs of the model in "
                f"{folder} (its labels: {self._model.label_names})"
            )
        self._labels = list(spec.labels)
        log.info("nnU-Net model %s loaded from %s on %s", spec.id, folder, device)

    def predict(self, channels: Sequence[Volume], params: InferenceParams) -> Prediction:
        if self._model is None:
            raise RuntimeError("predict() before load()")
        labels, probs = self._model.predict(
            channels,
            tta=params.tta,
            tile_step_size=params.tile_step_size,
            probabilities=params.needs_probabilities,
        )
        top = max(label.value for label in self._labels)
        known = np.isin(labels, [label.value for label in self._labels])
        out = np.where(known, labels, 0).astype(label_dtype(top))
        if probs is not None and probs.shape[0] < top + 1:
            raise ModelLoadError("the model returned fewer probability maps than labels")
        return Prediction(labels=out, probabilities=probs)
