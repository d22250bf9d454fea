"""Run a registry entry (one model or a cascade) on a job's volumes.

Parameters: a job's ``params`` override the model's registry defaults; for a cascade they apply
to its last stage (whose output is the result) and ``params["stages"][i]`` to stage ``i``.
Models are loaded once per worker process and dropped after ``model_cache_ttl_s`` unused
(:class:`BackendCache`); a job's models run on the GPU when there is one, holding its job slot
(:mod:`.device`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError

from ainode.registry import (
    InferenceParams,
    LabelSpec,
    LinkMode,
    ModelKind,
    ModelSpec,
    Registry,
    StageSpec,
)
from ainode.settings import Settings
from ainode_worker.inference.backend import Backend, create_backend
from ainode_worker.inference.cascade import bounding_box, keep_overlapping, paste, selected
from ainode_worker.inference.device import DevicePolicy, GpuInfo, cuda_probe
from ainode_worker.inference.errors import InputMismatchError, ParamsError, WeightsMissingError
from ainode_worker.inference.postprocess import postprocess
from ainode_worker.inference.prediction import Prediction, label_dtype
from ainode_worker.volume import Volume, resample_to

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PipelineResult:
    """The label map on the main series' grid, and what describes it."""

    labels: npt.NDArray[np.unsignedinteger]
    probabilities: npt.NDArray[np.float32] | None
    label_specs: list[LabelSpec]
    model_version: str
    pipeline_id: str
    timings: dict[str, float] = field(default_factory=dict)
    stage_versions: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class _Entry:
    backend: Backend
    model: str
    device: torch.device
    last_used: float
    users: int = 0


class BackendCache:
    """Loaded backends, keyed by everything that changes what is loaded.

    A model stays loaded between jobs; one unused for ``ttl_s`` seconds is dropped (its GPU
    memory given back), checked on every use and, once a model is loaded, by a background
    sweep (``sweep=False``: on use only). ``devices`` says where models run and waits for GPU
    memory before a load.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        ttl_s: float | None = None,
        devices: DevicePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sweep: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.ttl_s = ttl_s
        self._sweep = sweep
        self.devices = devices or DevicePolicy()
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    @contextmanager
    def use(self, spec: ModelSpec, device: torch.device) -> Iterator[tuple[Backend, bool]]:
        """(backend, whether it was loaded now), not evicted while the block runs."""
        key = _cache_key(spec, device)
        with self._lock:
            self._evict_expired_locked()
            entry = self._entries.get(key)
            loaded = entry is None
            if entry is None:
                if device.type == "cuda":
                    self.devices.wait_for_memory(spec.min_gpu_memory_mb, spec.id)
                backend = create_backend(spec.kind, self.data_dir)
                backend.load(spec, device)
                entry = _Entry(backend, spec.id, device, self._clock())
                self._entries[key] = entry
                self._start_sweeper()
            entry.users += 1
        try:
            yield entry.backend, loaded
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = self._clock()

    def get(self, spec: ModelSpec, device: torch.device) -> tuple[Backend, bool]:
        """(backend, whether it was loaded now); its idle time counts from now."""
        with self.use(spec, device) as used:
            return used

    def loaded(self) -> list[tuple[str, torch.device]]:
        """(model id, device) of each loaded backend."""
        with self._lock:
            return [(e.model, e.device) for e in self._entries.values()]

    def evict_expired(self) -> list[str]:
        """Drop the backends idle for longer than ``ttl_s``; the ids of the models dropped."""
        with self._lock:
            return self._evict_expired_locked()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        _release_gpu_memory()

    def _evict_expired_locked(self) -> list[str]:
        if self.ttl_s is None:
            return []
        now = self._clock()
        expired = [
            key
            for key, entry in self._entries.items()
            if entry.users == 0 and now - entry.last_used > self.ttl_s
        ]
        models = [self._entries.pop(key).model for key in expired]
        if models:
            log.info("unloaded model(s) %s after %g s unused", ", ".join(models), self.ttl_s)
            _release_gpu_memory()
        return models

    def _start_sweeper(self) -> None:
        """Evict while the worker is idle too (not only when the next job comes)."""
        if self.ttl_s is None or not self._sweep or self._sweeper is not None:
            return
        interval = min(60.0, max(0.05, self.ttl_s / 2))

        def sweep() -> None:
            while True:
                time.sleep(interval)
                self.evict_expired()

        self._sweeper = threading.Thread(target=sweep, name="model-cache-ttl", daemon=True)
        self._sweeper.start()


def _cache_key(spec: ModelSpec, device: torch.device) -> str:
    load_relevant = spec.model_dump(mode="json", exclude={"defaults", "description", "name"})
    load_relevant["defaults"] = spec.defaults.model_dump(
        mode="json", include={"folds", "checkpoint_name"}
    )
    return hashlib.sha256(
        json.dumps([load_relevant, str(device)], sort_keys=True).encode()
    ).hexdigest()


def _release_gpu_memory() -> None:
    gc.collect()  # backends hold reference cycles (nnU-Net's predictor)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@lru_cache(maxsize=1)
def default_cache() -> BackendCache:
    """The worker process's cache, configured by the node's settings."""
    from ainode.settings import load_settings

    return cache_from_settings(load_settings())


def cache_from_settings(settings: Settings) -> BackendCache:
    """A cache with the settings' model time-to-live and GPU rules."""
    return BackendCache(
        settings.data_dir,
        ttl_s=settings.model_cache_ttl_s or None,
        devices=DevicePolicy(
            memory_wait_s=settings.gpu_memory_wait_s,
            jobs_per_gpu=settings.gpu_jobs_per_device,
            lock_dir=settings.data_dir / "locks",
            probe=_no_gpu if settings.worker_device == "cpu" else cuda_probe,
        ),
    )


def _no_gpu() -> GpuInfo | None:
    """The probe of a worker told to keep off the GPU (``worker_device: cpu``)."""
    return None


def run_pipeline(
    registry: Registry,
    pipeline_id: str,
    volumes: Mapping[str, Volume],
    params: Mapping[str, Any] | None = None,
    *,
    cache: BackendCache | None = None,
) -> PipelineResult:
    """Run model or cascade ``pipeline_id`` on ``volumes`` (channel name -> volume; ``main``
    is required and defines the output grid)."""
    started = time.perf_counter()
    cache = cache or default_cache()
    entry = registry.get(pipeline_id)
    if "main" not in volumes:
        raise InputMismatchError("no 'main' series given")
    main = volumes["main"]
    grid = {name: v if v.same_grid(main) else resample_to(v, main) for name, v in volumes.items()}
    stages = registry.stages(entry.id)
    overrides = _stage_overrides(entry, stages, params or {})
    timings: dict[str, float] = {}
    versions: dict[str, str] = {}
    previous: Prediction | None = None
    final_params = InferenceParams()
    device = cache.devices.device()
    clock = time.perf_counter()
    with cache.devices.gpu_slot(device):
        if device.type == "cuda":
            timings["gpu_wait_s"] = time.perf_counter() - clock
        for index, stage in enumerate(stages):
            spec = registry.get(stage.model)
            try:
                stage_params = spec.defaults.merged(stage.params).merged(overrides[index])
            except ValidationError as error:
                raise ParamsError(
                    f"invalid parameters for stage {index} ({spec.id}): {error}"
                ) from error
            prefix = f"stage{index}.{spec.id}"
            previous = _run_stage(
                registry, spec, stage, stage_params, grid, previous, cache, device, timings, prefix
            )
            versions[spec.id] = spec.version
            final_params = stage_params
    assert previous is not None
    kept = set(final_params.classes) if final_params.classes is not None else None
    label_specs = [
        label for label in registry.output_labels(entry.id) if kept is None or label.value in kept
    ]
    timings["total_s"] = time.perf_counter() - started
    return PipelineResult(
        labels=previous.labels,
        probabilities=previous.probabilities if final_params.return_probabilities else None,
        label_specs=label_specs,
        model_version=entry.version,
        pipeline_id=entry.id,
        timings=timings,
        stage_versions=versions,
    )


def _stage_overrides(
    entry: ModelSpec, stages: Sequence[StageSpec], params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Per stage, the job's (and a cascade's own) overrides of that stage's defaults."""
    top = {k: v for k, v in params.items() if k != "stages"}
    per_stage = params.get("stages", [])
    if not isinstance(per_stage, list) or len(per_stage) > len(stages):
        raise ParamsError(f"params 'stages' must be a list of at most {len(stages)} mappings")
    overrides: list[dict[str, Any]] = [{} for _ in stages]
    for index, item in enumerate(per_stage):
        if not isinstance(item, dict):
            raise ParamsError(f"params 'stages'[{index}] must be a mapping")
        overrides[index].update(item)
    if entry.kind is ModelKind.CASCADE:
        overrides[-1] = {**entry.defaults.model_dump(exclude_unset=True), **overrides[-1]}
    overrides[-1].update(top)
    return overrides


def _run_stage(
    registry: Registry,
    spec: ModelSpec,
    stage: StageSpec,
    params: InferenceParams,
    grid: Mapping[str, Volume],
    previous: Prediction | None,
    cache: BackendCache,
    device: torch.device,
    timings: dict[str, float],
    prefix: str,
) -> Prediction:
    missing = [name for name in spec.input.channels if name not in grid]
    if missing:
        raise InputMismatchError(
            f"model {spec.id} needs series for channel(s) {missing}; the job provides "
            f"{sorted(grid)}"
        )
    channels = [grid[name] for name in spec.input.channels]
    main = channels[0]
    expected = spec.input.modality.upper()
    if expected and main.modality and main.modality.upper() != expected:
        raise InputMismatchError(
            f"model {spec.id} expects a {expected} series; the job's series is {main.modality}"
        )
    weights = registry.weights_path(spec)
    resolved = spec.model_copy(
        update={"weights": str(weights) if weights else None, "defaults": params}
    )
    if weights is not None and not weights.exists() and spec.kind is not ModelKind.BIOMEDPARSE:
        raise WeightsMissingError(f"weights of {spec.id} not found: {weights}")
    clock = time.perf_counter()
    with cache.use(resolved, device) as (backend, loaded):
        if loaded:
            timings[f"{prefix}.load_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        prediction = _predict(backend, stage, params, channels, previous, spec, prefix)
    timings[f"{prefix}.predict_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    labels = postprocess(prediction.labels, prediction.probabilities, params, main.spacing)
    timings[f"{prefix}.postprocess_s"] = time.perf_counter() - clock
    return Prediction(labels=labels, probabilities=prediction.probabilities)


def _predict(
    backend: Backend,
    stage: StageSpec,
    params: InferenceParams,
    channels: Sequence[Volume],
    previous: Prediction | None,
    spec: ModelSpec,
    prefix: str,
) -> Prediction:
    """One stage's prediction, linked to the previous stage's output as the stage says."""
    main = channels[0]
    link = stage.from_previous
    mask = selected(previous.labels, link.labels) if link and previous is not None else None
    if link is None or mask is None:
        prediction = backend.predict(channels, params)
    elif link.mode is LinkMode.CROP:
        box = bounding_box(mask, link.padding(), main.spacing)
        if box is None:
            log.info("%s: previous stage found nothing; nothing to crop", prefix)
            prediction = _empty(spec, main.shape, params.needs_probabilities)
        else:
            cropped = backend.predict([c.crop(box) for c in channels], params)
            prediction = paste(cropped, box, main.shape)
    elif link.mode is LinkMode.CHANNEL:
        extra = np.where(mask, previous.labels, 0).astype(np.float32)  # type: ignore[union-attr]
        prediction = backend.predict([*channels, main.with_array(extra)], params)
    else:
        prediction = backend.predict(channels, params)
        prediction = Prediction(
            labels=keep_overlapping(prediction.labels, mask, link.min_overlap),
            probabilities=prediction.probabilities,
        )
    return prediction


def _empty(spec: ModelSpec, shape: tuple[int, int, int], probabilities: bool) -> Prediction:
    """Nothing found: all background (with certainty, if probabilities are wanted)."""
    top = max((label.value for label in spec.labels), default=1)
    probs = None
    if probabilities:
        probs = np.zeros((top + 1, *shape), dtype=np.float32)
        probs[0] = 1.0
    return Prediction(labels=np.zeros(shape, dtype=label_dtype(top)), probabilities=probs)
