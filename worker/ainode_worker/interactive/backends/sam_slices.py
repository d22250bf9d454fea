"""SAM-family models on a volume: 2D prompts on some slices, a 3D mask by propagation.

SAM models are 2D. The prompted slices ("anchors") are decoded from the user's clicks and
boxes; every other slice is decoded from its neighbour's result (a box around the neighbour's
mask, a positive point at its most interior pixel, and its low-resolution logits as mask
input), walking away from each anchor in both directions until the object ends (empty or tiny
mask, SAM 2's object score below zero, a sudden jump in area that signals a leak, or a low
predicted IoU) or the walk meets the half-way point to the next anchor.

Why this and not SAM 2's video predictor: on a CPU the video predictor's memory attention
costs more per slice than decoding, and its per-frame features are not kept between calls;
slice-by-slice propagation needs only the image encoder and the light decoder, so each
slice's embedding is computed once per session and every later click costs decoder calls
only. Decoder results are cached too, keyed by their exact inputs: a correction on one slice
recomputes only the slices whose prompt chain it changes. The same code drives the PyTorch
and the ONNX runtime (:class:`SliceModel`).

Preprocessing (one place for both runtimes): intensities are mapped to 0..1 by a fixed window
or the volume's 0.5-99.5 percentiles, the slice is replicated to RGB, resized to the model's
square input (SAM 2: stretched; SAM 1: longest side, zero-padded) with bilinear weights equal
to PyTorch's ``interpolate(..., align_corners=False)``, and normalised with ImageNet's mean and
standard deviation. Masks come back through the inverse mapping.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ..cache import Computed, FeatureCache
from ..errors import BadRequestError
from ..prompts import Prompts
from ..sessions import VolumeView
from .base import SegmentOutcome

log = logging.getLogger(__name__)

Float2D = npt.NDArray[np.float32]
ResizeMode = Literal["stretch", "longest_side"]
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
_MASK_LOGIT = 10.0  # logits that stand for a given (binary) previous mask


@dataclass(frozen=True)
class Decoded:
    low_res: Float2D  # logits [m, m] in the model's input frame
    score: float  # predicted IoU
    object_score: float | None = None  # SAM 2: < 0 means "no object here"


class SliceModel(Protocol):
    """A SAM-family model: encode a preprocessed slice once, decode prompts many times."""

    image_size: int
    mask_size: int
    resize: ResizeMode

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def encode(self, image: npt.NDArray[np.float32]) -> Computed:
        """Features of one preprocessed [1, 3, S, S] image (value, bytes, on GPU)."""

    def decode(
        self,
        features: Any,
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
        mask_input: Float2D | None,
    ) -> Decoded:
        """One mask for points ([n, 2] model-input pixels) with labels ([n])."""


class LoadedOnce:
    """A :class:`SliceModel`'s weights, loaded on first use and once, however many sessions
    ask at the same time; ``_load`` sets ``_encoder``, ``_decoder`` and the sizes."""

    def __init__(self) -> None:
        self.image_size = 0
        self.mask_size = 0
        self._lock = threading.Lock()
        self._encoder: Any = None
        self._decoder: Any = None

    @property
    def loaded(self) -> bool:
        return self._decoder is not None

    def load(self) -> None:
        with self._lock:
            if self._decoder is None:
                self._load()

    def _load(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class PropagationParams:
    window: tuple[float, float] | None = None  # (low, high) intensity; None: percentiles
    max_slices: int = 512  # per direction and anchor
    min_area_px: int = 10  # a smaller slice mask ends the walk
    max_growth: float = 2.5  # area ratio to the previous slice that is taken for a leak
    min_score: float = 0.0  # predicted IoU below which the walk ends
    box_margin_px: float = 2.0  # slack around the neighbour's mask when used as a box


@dataclass(frozen=True)
class SliceFrame:
    """The mapping between a slice (rows x columns) and the model's square input."""

    rows: int
    columns: int
    size: int
    resize: ResizeMode

    @property
    def scaled(self) -> tuple[int, int]:
        """Height and width the slice occupies inside the model input."""
        if self.resize == "stretch":
            return self.size, self.size
        scale = self.size / max(self.rows, self.columns)
        return int(self.rows * scale + 0.5), int(self.columns * scale + 0.5)

    def image(self, pixels: Float2D, window: tuple[float, float]) -> npt.NDArray[np.float32]:
        low, high = window
        unit = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
        height, width = self.scaled
        resized = _matrix(height, self.rows) @ unit @ _matrix(width, self.columns).T
        padded = np.zeros((self.size, self.size), dtype=np.float32)
        padded[:height, :width] = resized
        image = (padded[None] - _MEAN) / _STD
        if self.resize == "longest_side":
            image[:, height:, :] = 0.0  # SAM 1 pads after normalising
            image[:, :, width:] = 0.0
        return np.ascontiguousarray(image[None], dtype=np.float32)

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        height, width = self.scaled
        return x * width / self.columns, y * height / self.rows

    def upsample(self, low_res: Float2D) -> Float2D:
        """Logits on the slice grid from low-resolution logits on the model frame."""
        m = low_res.shape[0]
        height, width = self.scaled
        rows = _matrix(self.rows, m, self.rows * self.size / height)
        cols = _matrix(self.columns, m, self.columns * self.size / width)
        return np.asarray(rows @ low_res @ cols.T, dtype=np.float32)

    def downsample(self, mask: npt.NDArray[np.uint8], m: int) -> Float2D:
        """Logits on the low-resolution model frame standing for a binary slice mask."""
        height, width = self.scaled
        rows = _matrix(m, self.rows, m * height / self.size)
        cols = _matrix(m, self.columns, m * width / self.size)
        fraction = rows @ mask.astype(np.float32) @ cols.T
        fraction[int(np.ceil(m * height / self.size)) :, :] = 0.0  # SAM 1's padding
        fraction[:, int(np.ceil(m * width / self.size)) :] = 0.0
        return np.asarray((fraction - 0.5) * 2.0 * _MASK_LOGIT, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _matrix(n_out: int, n_in: int, extent: float | None = None) -> Float2D:
    """Bilinear weights [n_out, n_in] as ``interpolate(align_corners=False)`` computes them.

    ``extent`` is how many output samples the input's extent spans (default ``n_out``); output
    samples beyond it clamp to the input's last sample.
    """
    extent = float(n_out) if extent is None else extent
    source = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / extent) - 0.5
    source = np.clip(source, 0.0, n_in - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, n_in - 1)
    weight = source - lower
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(matrix, (np.arange(n_out), lower), 1.0 - weight)
    np.add.at(matrix, (np.arange(n_out), upper), weight)
    return matrix


class SamBackend:
    """A :class:`~.base.Backend` over any :class:`SliceModel`."""

    def __init__(
        self,
        name: str,
        kind: str,
        model: SliceModel,
        params: PropagationParams | None = None,
        *,
        weights: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.model = model
        self.params = params or PropagationParams()
        self.weights = weights

    def ensure_ready(self) -> None:
        self.model.load()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "loaded": self.model.loaded,
            "weights": self.weights,
        }

    def segment(self, view: VolumeView, prompts: Prompts, cache: FeatureCache) -> SegmentOutcome:
        return _Run(self, view, prompts, cache).segment()


@dataclass(frozen=True)
class _SliceResult:
    """One decoded slice as the cache keeps it: what the walk needs without recomputing."""

    decoded: Decoded
    bits: npt.NDArray[np.uint8]  # the slice mask, numpy.packbits
    area: int
    follow: tuple[tuple[float, float, float], ...]  # the prompt it gives the next slice

    @property
    def nbytes(self) -> int:
        return int(self.decoded.low_res.nbytes + self.bits.nbytes) + 256


Click = tuple[float, float, float]  # x, y, SAM label (1, 0, 2/3 box corners)


class _Run:
    """One request's propagation: timing and cache statistics kept together."""

    def __init__(
        self, backend: SamBackend, view: VolumeView, prompts: Prompts, cache: FeatureCache
    ) -> None:
        self.model = backend.model
        self.params = backend.params
        self.view = view
        self.prompts = prompts
        self.cache = cache
        _slices, rows, columns = view.array.shape
        self.frame = SliceFrame(rows, columns, self.model.image_size, self.model.resize)
        self.mask = np.zeros(view.array.shape, dtype=np.uint8)
        self.outcome = SegmentOutcome(mask=self.mask)
        self.window = self.params.window or self._percentiles()

    def segment(self) -> SegmentOutcome:
        anchors = self.prompts.slices()
        results = {z: self._decode_anchor(z) for z in anchors}
        slices = self.view.array.shape[0]
        for i, z in enumerate(anchors):
            low = 0 if i == 0 else (anchors[i - 1] + z) // 2 + 1
            high = slices - 1 if i == len(anchors) - 1 else (z + anchors[i + 1]) // 2
            self._walk(results[z], z, +1, high)
            self._walk(results[z], z, -1, low)
        return self.outcome

    def _percentiles(self) -> tuple[float, float]:
        def compute() -> Computed:
            sample = self.view.array[:: max(1, self.view.array.shape[0] // 32)]
            low, high = np.percentile(sample, [0.5, 99.5])
            return Computed((float(low), float(high)), 16)

        window, _ = self.cache.get_or_compute("window", compute)
        low, high = window
        return float(low), float(high)

    def _features(self, z: int) -> Any:
        started = time.perf_counter()
        features, reused = self.cache.get_or_compute(
            ("slice", z),
            lambda: self.model.encode(self.frame.image(self.view.array[z], self.window)),
        )
        if reused:
            self.outcome.features_reused += 1
        else:
            self.outcome.features_computed += 1
            self.outcome.embed_ms += (time.perf_counter() - started) * 1000.0
        return features

    def _decode(self, z: int, points: list[Click], mask_input: Float2D | None) -> _SliceResult:
        """Decode one slice and write its mask; an identical earlier decode is reused."""
        started = time.perf_counter()
        embed_before = self.outcome.embed_ms
        digest = None if mask_input is None else hashlib.blake2b(mask_input.tobytes()).digest()

        def compute() -> Computed:
            features = self._features(z)
            coords = np.array([self.frame.to_model(x, y) for x, y, _ in points], np.float32)
            labels = np.array([label for _, _, label in points], dtype=np.float32)
            decoded = self.model.decode(features, coords.reshape(-1, 2), labels, mask_input)
            self.outcome.slices_decoded += 1
            mask = self.frame.upsample(decoded.low_res) > 0.0
            area = int(mask.sum())
            follow = self._follow(mask) if area >= self.params.min_area_px else ()
            result = _SliceResult(decoded, np.packbits(mask), area, follow)
            return Computed(result, result.nbytes)

        result, reused = self.cache.get_or_compute(("decode", z, tuple(points), digest), compute)
        if reused:
            self.outcome.decodes_reused += 1
        elapsed = (time.perf_counter() - started) * 1000.0
        self.outcome.decode_ms += elapsed - (self.outcome.embed_ms - embed_before)
        return result  # type: ignore[no-any-return]

    def _keep(self, z: int, result: _SliceResult) -> None:
        rows, columns = self.mask.shape[1:]
        self.mask[z] = np.unpackbits(result.bits, count=rows * columns).reshape(rows, columns)

    def _clicks(self, z: int, positive: bool | None = None) -> list[Click]:
        return [
            (p.x, p.y, 1.0 if p.positive else 0.0)
            for p in self.prompts.points
            if p.z == z and (positive is None or p.positive == positive)
        ]

    def _decode_anchor(self, z: int) -> _SliceResult:
        points = self._clicks(z)
        boxes = [b.normalised() for b in self.prompts.boxes if b.z == z]
        if len(boxes) > 1:
            raise BadRequestError(f"slice {z} has {len(boxes)} boxes; SAM takes one box per slice")
        if boxes:
            box = boxes[0]
            points += [(box.x0, box.y0, 2.0), (box.x1, box.y1, 3.0)]
        mask_input = None
        if self.prompts.previous_mask is not None and self.prompts.previous_mask[z].any():
            mask_input = self.frame.downsample(self.prompts.previous_mask[z], self.model.mask_size)
        result = self._decode(z, points, mask_input)
        self._keep(z, result)
        return result

    def _walk(self, previous: _SliceResult, start: int, step: int, limit: int) -> None:
        for z in range(start + step, limit + step, step):
            if abs(z - start) > self.params.max_slices or not previous.follow:
                break
            points = list(previous.follow) + self._clicks(z, positive=False)
            result = self._decode(z, points, previous.decoded.low_res)
            object_score = result.decoded.object_score
            if (
                result.area < self.params.min_area_px
                or result.area > self.params.max_growth * previous.area
                or result.decoded.score < self.params.min_score
                or (object_score is not None and object_score < 0.0)
            ):
                break
            self._keep(z, result)
            previous = result

    def _follow(self, mask: npt.NDArray[np.bool_]) -> tuple[Click, ...]:
        """The next slice's prompt: a box around this mask and its most interior pixel."""
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        margin = self.params.box_margin_px
        top, bottom = max(rows[0] - margin, 0.0), min(rows[-1] + margin, mask.shape[0] - 1.0)
        left, right = max(cols[0] - margin, 0.0), min(cols[-1] + margin, mask.shape[1] - 1.0)
        # The distance transform only needs the mask's bounding box (plus a background rim).
        crop = mask[max(rows[0] - 1, 0) : rows[-1] + 2, max(cols[0] - 1, 0) : cols[-1] + 2]
        depth = ndi.distance_transform_edt(crop)
        y, x = np.unravel_index(int(np.argmax(depth)), crop.shape)
        y, x = y + max(rows[0] - 1, 0), x + max(cols[0] - 1, 0)
        return (
            (float(x), float(y), 1.0),
            (float(left), float(top), 2.0),
            (float(right), float(bottom), 3.0),
        )
