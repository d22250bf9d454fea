"""TotalSegmentator tasks, run as the nnU-Net models they are (TotalSegmentator's tables only).

A task (e.g. ``total``) maps to one or more nnU-Net dataset folders in TotalSegmentator's
weights layout (``<weights>/nnunet/results/Dataset291_.../<Trainer>__<Plans>__3d_fullres``).
Registry labels are matched by name to each part's labels (a part of a multi-part task named as
in TotalSegmentator's part table, as TotalSegmentator merges them; another model as in its
dataset.json), so a registry entry may keep only the structures a site wants, with its own label
values. Each part runs on the whole volume at its own plans' spacing (nnU-Net resamples in and
out), so the 3 mm fast model needs no resampling of its own.

Privacy: TotalSegmentator, if ever imported in this process, sends usage statistics unless its
config says otherwise; ``load`` writes ``send_usage_stats: false`` into a home folder inside the
node's data dir and points ``TOTALSEG_HOME_DIR`` there (never at import time).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ainode.registry import (
    InferenceParams,
    ModelSpec,
    totalsegmentator_folders,
    totalsegmentator_results_dir,
)
from ainode.totalseg_tasks import part_label_names
from ainode_worker.inference.errors import ModelLoadError, WeightsMissingError
from ainode_worker.inference.nnunet import NnUNetPredictorModel
from ainode_worker.inference.prediction import Prediction, label_dtype
from ainode_worker.volume import Volume

log = logging.getLogger(__name__)


def disable_usage_statistics(home: Path, weights: Path | None = None) -> Path:
    """Make TotalSegmentator's config (``<home>/config.json``) say no usage statistics."""
    home.mkdir(parents=True, exist_ok=True)
    config_file = home / "config.json"
    config: dict[str, Any] = {}
    if config_file.is_file():
        try:
            loaded = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            log.warning("replacing unreadable %s", config_file)
        else:
            config = loaded if isinstance(loaded, dict) else {}
    config["send_usage_stats"] = False
    config_file.write_text(json.dumps(config, indent=2))
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    if weights is not None:
        os.environ["TOTALSEG_WEIGHTS_PATH"] = str(totalsegmentator_results_dir(weights))
    return config_file


def _part_names(folder: Path, dataset_names: dict[str, int]) -> dict[str, int]:
    """Label name -> value of one model of a task: a part of a multi-part task is read with
    TotalSegmentator's own part table (how it merges parts), any other with its dataset.json."""
    part = part_label_names(folder.parent.name)
    if part is None:
        return dataset_names
    return {name: value for value, name in part.items()}


class TotalSegmentatorBackend:
    """Registry kind ``totalsegmentator``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._parts: list[tuple[NnUNetPredictorModel, dict[int, int]]] = []
        self._top = 0

    def load(self, spec: ModelSpec, device: torch.device) -> None:
        if spec.weights is None or spec.totalsegmentator is None:
            raise WeightsMissingError(f"model {spec.id} names no TotalSegmentator weights/task")
        weights = Path(spec.weights)
        disable_usage_statistics(self.home, weights)
        task = spec.totalsegmentator.task
        try:
            folders = totalsegmentator_folders(weights, task)
        except FileNotFoundError as error:
            raise WeightsMissingError(
                f"TotalSegmentator task {task!r}: {error} (weights folder: {weights})"
            ) from error
        wanted = {label.name.lower(): label.value for label in spec.labels}
        found: set[str] = set()
        self._parts = []
        for folder in folders:
            model = NnUNetPredictorModel(
                folder,
                spec.defaults.folds,
                spec.defaults.checkpoint_name,
                device,
                spec.defaults.tile_step_size,
            )
            names = _part_names(folder, model.label_names)
            mapping = {
                value: wanted[name.lower()]
                for name, value in names.items()
                if name.lower() in wanted and value > 0
            }
            found.update(name.lower() for name in names if name.lower() in wanted)
            if mapping:
                self._parts.append((model, mapping))
            else:
                log.info("part %s has none of the wanted labels; not run", folder.parent.name)
        missing = set(wanted) - found
        if missing:
            raise ModelLoadError(
                f"TotalSegmentator task {task!r} has no labels named {sorted(missing)}"
            )
        self._top = max(label.value for label in spec.labels)
        log.info(
            "TotalSegmentator task %s loaded (%d part(s)) on %s", task, len(self._parts), device
        )

    def predict(self, channels: Sequence[Volume], params: InferenceParams) -> Prediction:
        if not self._parts:
            raise RuntimeError("predict() before load()")
        shape = channels[0].shape
        labels = np.zeros(shape, dtype=label_dtype(self._top))
        probs = (
            np.zeros((self._top + 1, *shape), dtype=np.float32)
            if params.needs_probabilities
            else None
        )
        for model, mapping in self._parts:
            part_labels, part_probs = model.predict(
                channels,
                tta=params.tta,
                tile_step_size=params.tile_step_size,
                probabilities=probs is not None,
            )
            for source, target in mapping.items():
                labels[(part_labels == source) & (labels == 0)] = target
                if probs is not None and part_probs is not None:
                    probs[target] = part_probs[source]
        if probs is not None:
            probs[0] = 1.0 - probs[1:].max(axis=0)
        return Prediction(labels=labels, probabilities=probs)
