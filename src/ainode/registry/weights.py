"""Where a model's weights live on disk and whether they are there.

Weights locations in the registry are resolved against a models root (default: the repository's
``sample-data/models``); :func:`check_weights` says whether a model's weights are where the
registry says, naming the path it looked at. nnU-Net results folders and TotalSegmentator's
task folders are laid out by those tools; the layouts are read here and nowhere else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from ainode.settings import REPO_ROOT
from ainode.totalseg_tasks import TotalSegmentatorTablesMissing, totalsegmentator_tasks

from .schema import Availability, BiomedParseOptions, InferenceParams, ModelKind, ModelSpec

DEFAULT_MODELS_ROOT = REPO_ROOT / "sample-data" / "models"


def totalsegmentator_results_dir(weights: Path) -> Path:
    """TotalSegmentator keeps weights in ``<home>/nnunet/results``; accept either folder."""
    nested = weights / "nnunet" / "results"
    return nested if nested.is_dir() else weights


def nnunet_model_folder(path: Path) -> Path:
    """The folder with plans.json: ``path`` itself or its single ``Trainer__Plans__conf`` child.

    Raises FileNotFoundError naming what was looked for.
    """
    if (path / "plans.json").is_file():
        return path
    candidates = sorted(p.parent for p in path.glob("*/plans.json")) if path.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(f"no nnU-Net model (plans.json) in {path} or its sub-folders")
    names = ", ".join(c.name for c in candidates)
    raise FileNotFoundError(f"several nnU-Net models in {path} ({names}); point weights at one")


def totalsegmentator_folders(weights: Path, task: str) -> list[Path]:
    """The nnU-Net model folders of a TotalSegmentator task (raise FileNotFoundError if absent).

    The task's folders are TotalSegmentator's own (:mod:`ainode.totalseg_tasks`)."""
    try:
        tasks = totalsegmentator_tasks()
    except TotalSegmentatorTablesMissing as error:
        raise FileNotFoundError(str(error)) from error
    if task not in tasks:
        known = ", ".join(tasks)
        raise FileNotFoundError(f"unknown TotalSegmentator task {task!r}; known: {known}")
    results = totalsegmentator_results_dir(weights)
    return [nnunet_model_folder(results / name) for name in tasks[task]]


def _folds_present(folders: Sequence[Path], defaults: InferenceParams) -> Availability:
    for folder in folders:
        for fold in defaults.folds:
            checkpoint = folder / f"fold_{fold}" / defaults.checkpoint_name
            if not checkpoint.is_file():
                return Availability(available=False, reason=f"checkpoint not found: {checkpoint}")
    return Availability(available=True, reason=f"weights found: {', '.join(map(str, folders))}")


def check_weights(spec: ModelSpec, path: Path | None) -> Availability:
    """Whether a single (not cascade) model's weights, at ``path``, can be used here."""
    if spec.kind is ModelKind.BIOMEDPARSE:
        options = spec.biomedparse or BiomedParseOptions()
        if options.service_url is not None:
            return Availability(available=True, reason=f"HTTP service {options.service_url}")
        if importlib.util.find_spec(options.package) is None:
            return Availability(
                available=False,
                reason=f"Python package {options.package!r} is not installed",
            )
    assert path is not None  # validated: every other kind has weights
    if spec.kind is ModelKind.TOTALSEGMENTATOR:
        assert spec.totalsegmentator is not None
        try:
            folders = totalsegmentator_folders(path, spec.totalsegmentator.task)
        except FileNotFoundError as error:
            return Availability(available=False, reason=str(error))
        return _folds_present(folders, spec.defaults)
    if spec.kind is ModelKind.NNUNET:
        try:
            folder = nnunet_model_folder(path)
        except FileNotFoundError as error:
            return Availability(available=False, reason=str(error))
        return _folds_present([folder], spec.defaults)
    if not path.is_file():
        return Availability(available=False, reason=f"weights file not found: {path}")
    return Availability(available=True, reason=f"weights found: {path}")
