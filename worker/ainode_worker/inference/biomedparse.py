"""BiomedParse: text-prompted segmentation, in the worker or through a BiomedParse service.

HTTP mode follows the BiomedParse backend API (``/api/biomedparse/v1``): ``POST
/predict-3d-nifti`` with the volume as a NIfTI file and the prompts, answering per prompt a
``mask_url`` (npz, key ``seg``) and, if asked, a ``heatmap_url`` (npz, key ``prob``, uint8 0-255),
both fetched from the service. In-process mode loads BiomedParse v2 from its installed package
and checkpoint; when either is missing the error says so and how to use the service instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import numpy as np
import numpy.typing as npt
import torch

from ainode.registry import BiomedParseOptions, InferenceParams, ModelSpec
from ainode_worker.inference.errors import (
    BackendUnavailableError,
    InputMismatchError,
    ModelLoadError,
    RemoteServiceError,
    WeightsMissingError,
)
from ainode_worker.inference.nifti import from_nifti_array, load_npz_array, to_nifti_bytes
from ainode_worker.inference.prediction import Prediction, label_dtype
from ainode_worker.volume import Volume

log = logging.getLogger(__name__)


class BiomedParseBackend:
    """Registry kind ``biomedparse``."""

    def __init__(self) -> None:
        self._spec: ModelSpec | None = None
        self._options = BiomedParseOptions()
        self._local: _InProcessModel | None = None

    def load(self, spec: ModelSpec, device: torch.device) -> None:
        self._spec = spec
        self._options = spec.biomedparse or BiomedParseOptions()
        if self._options.service_url is not None:
            log.info("BiomedParse model %s uses the service %s", spec.id, self._options.service_url)
            return
        self._local = _InProcessModel(self._options.package, spec.weights, device)

    def predict(self, channels: Sequence[Volume], params: InferenceParams) -> Prediction:
        spec = self._spec
        if spec is None:
            raise RuntimeError("predict() before load()")
        if len(channels) != 1:
            raise InputMismatchError(f"BiomedParse takes one series, {len(channels)} given")
        volume = channels[0]
        prompts = [spec.prompt(label) for label in spec.labels]
        if self._local is not None:
            masks, heatmaps = self._local.predict(volume, prompts, self._options.threshold)
        else:
            masks, heatmaps = self._predict_http(volume, prompts, params.needs_probabilities)
        top = max(label.value for label in spec.labels)
        labels = np.zeros(volume.shape, dtype=label_dtype(top))
        probabilities = (
            np.zeros((top + 1, *volume.shape), dtype=np.float32)
            if params.needs_probabilities
            else None
        )
        for label, mask, heatmap in zip(spec.labels, masks, heatmaps, strict=True):
            if mask.shape != volume.shape:
                raise RemoteServiceError(
                    f"BiomedParse returned a mask of shape {mask.shape} for a volume of "
                    f"{volume.shape}"
                )
            labels[(mask > 0) & (labels == 0)] = label.value
            if probabilities is not None:
                probabilities[label.value] = (
                    heatmap if heatmap is not None else (mask > 0).astype(np.float32)
                )
        if probabilities is not None:
            probabilities[0] = 1.0 - probabilities[1:].max(axis=0)
        return Prediction(labels=labels, probabilities=probabilities)

    def _predict_http(
        self, volume: Volume, prompts: list[str], heatmaps: bool
    ) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[Any] | None]]:
        options = self._options
        assert options.service_url is not None
        base = options.service_url.rstrip("/") + "/"
        query: list[tuple[str, str | int | float | bool | None]] = [
            ("threshold", options.threshold),
            ("return_heatmap", "true" if heatmaps else "false"),
        ]
        query += [("prompts", prompt) for prompt in prompts]
        try:
            with httpx.Client(timeout=options.timeout_s) as client:
                response = client.post(
                    urljoin(base, "predict-3d-nifti"),
                    params=query,
                    data={"prompts": prompts},
                    files={"file": ("volume.nii.gz", to_nifti_bytes(volume), "application/gzip")},
                )
                _raise_for_status(response)
                results = _results_by_prompt(response.json(), prompts)
                masks: list[npt.NDArray[Any]] = []
                maps: list[npt.NDArray[Any] | None] = []
                for prompt in prompts:
                    result = results[prompt]
                    mask = self._fetch_npz(client, base, result, "mask_url", "seg")
                    masks.append(from_nifti_array(mask))
                    if heatmaps and result.get("heatmap_url"):
                        prob = self._fetch_npz(client, base, result, "heatmap_url", "prob")
                        maps.append(from_nifti_array(prob).astype(np.float32) / 255.0)
                    else:
                        maps.append(None)
        except httpx.HTTPError as error:
            raise RemoteServiceError(
                f"BiomedParse service {options.service_url} failed: {error}"
            ) from error
        return masks, maps

    @staticmethod
    def _fetch_npz(
        client: httpx.Client, base: str, result: dict[str, Any], url_key: str, array_key: str
    ) -> npt.NDArray[np.generic]:
        url = result.get(url_key)
        if not isinstance(url, str):
            raise RemoteServiceError(
                f"BiomedParse result for {result.get('prompt')!r} has no {url_key}"
            )
        response = client.get(urljoin(base, url))
        _raise_for_status(response)
        try:
            return load_npz_array(response.content, array_key)
        except (KeyError, ValueError, OSError) as error:
            raise RemoteServiceError(
                f"BiomedParse artifact {url} is not usable: {error}"
            ) from error


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        detail = response.text[:300]
        raise RemoteServiceError(
            f"BiomedParse service answered HTTP {response.status_code} for "
            f"{response.request.url.path}: {detail}"
        )


def _results_by_prompt(payload: object, prompts: list[str]) -> dict[str, dict[str, Any]]:
    if not isinstance(payload, dict) or payload.get("status") != "success":
        raise RemoteServiceError(
            f"BiomedParse service did not report success: {str(payload)[:300]}"
        )
    results = payload.get("results")
    if not isinstance(results, list):
        raise RemoteServiceError("BiomedParse answer has no 'results' list")
    by_prompt = {str(r.get("prompt")): r for r in results if isinstance(r, dict)}
    missing = [p for p in prompts if p not in by_prompt]
    if missing:
        raise RemoteServiceError(f"BiomedParse returned no result for prompts {missing}")
    return by_prompt


class _InProcessModel:
    """BiomedParse v2 loaded in this process from its package (hydra config + checkpoint).

    Not exercised by the tests (the package and its multi-GB checkpoint are not installable
    here); it fails with a clear message naming what is missing.
    """

    def __init__(self, package: str, checkpoint: str | None, device: torch.device) -> None:
        if importlib.util.find_spec(package) is None or importlib.util.find_spec("hydra") is None:
            raise BackendUnavailableError(
                f"BiomedParse is not installed in the worker's Python environment (package "
                f"{package!r} and hydra-core are needed); install it with its checkpoint, or set "
                "biomedparse.service_url in models.yaml to use a BiomedParse HTTP service"
            )
        if checkpoint is None or not Path(checkpoint).is_file():
            raise WeightsMissingError(f"BiomedParse checkpoint not found: {checkpoint}")
        import hydra
        from hydra import compose, initialize_config_module

        self.module: Any = importlib.import_module(package)
        self.utils: Any = importlib.import_module(f"{package}.utils")
        try:
            with initialize_config_module(config_module=f"{package}.configs", version_base=None):
                config = compose(config_name="biomedparse_3D")
            model: Any = hydra.utils.instantiate(config, _convert_="object")
            model.load_pretrained(checkpoint)
        except (ImportError, KeyError, RuntimeError, ValueError, OSError) as error:
            raise ModelLoadError(f"BiomedParse does not load from {checkpoint}: {error}") from error
        self.model = model.to(device).eval()
        self.device = device

    def predict(
        self, volume: Volume, prompts: list[str], threshold: float
    ) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[Any] | None]]:
        import torch.nn.functional as functional

        image = volume.array.transpose(2, 1, 0)  # BiomedParse works on NIfTI-ordered arrays
        imgs, pad_width, padded_size, valid_axis = self.utils.process_input(image, 512)
        inputs = {"image": imgs.to(self.device).int().unsqueeze(0), "text": ["[SEP]".join(prompts)]}
        with torch.no_grad():
            output = self.model(inputs, mode="eval", slice_batch_size=4)
        logits = functional.interpolate(
            output["predictions"]["pred_gmasks"],
            size=(512, 512),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        probs = logits.sigmoid()
        exists = output["predictions"]["object_existence"].sigmoid()
        masks: list[npt.NDArray[Any]] = []
        maps: list[npt.NDArray[Any] | None] = []
        for index in range(len(prompts)):
            gated = probs[index] * (exists[index] > threshold).float().view(-1, 1, 1)
            mask = self.utils.process_output(
                (gated > threshold).int().cpu(), pad_width, padded_size, valid_axis
            )
            prob = self.utils.process_output(gated.cpu(), pad_width, padded_size, valid_axis)
            masks.append(from_nifti_array(np.asarray(mask)))
            maps.append(from_nifti_array(np.asarray(prob, dtype=np.float32)))
        return masks, maps
