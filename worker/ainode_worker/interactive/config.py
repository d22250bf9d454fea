"""The interactive service's configuration: one typed object, built from the node's settings.

The node's :class:`~ainode.settings.Settings` gives the port and how to reach Orthanc; the
models come from an optional YAML file (``models:`` mapping a name to a model), because the
weights a site has differ from site to site. Without one the service offers ``regiongrow``,
which needs no weights. Example::

    models:
      regiongrow: {kind: regiongrow}
      sam2:
        kind: sam2
        checkpoint: /models/sam2.1_hiera_tiny.pt
        config: configs/sam2.1/sam2.1_hiera_t.yaml
      sam-onnx:
        kind: sam-onnx
        encoder: /models/sam2_hiera_tiny.encoder.onnx
        decoder: /models/sam2_hiera_tiny.decoder.onnx
    max_total_bytes: 8589934592
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ainode.credentials import orthanc_auth
from ainode.registry import Code
from ainode.settings import Settings

GiB = 1 << 30


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Propagation(_Strict):
    """How a SAM model's 2D results are carried through the volume (see ``sam_slices``)."""

    window: tuple[float, float] | None = Field(
        default=None, description="(low, high) intensity mapped to 0..1; default: percentiles"
    )
    max_slices: int = Field(default=512, ge=0)
    min_area_px: int = Field(default=10, ge=1)
    max_growth: float = Field(default=2.5, gt=1.0)
    min_score: float = 0.0
    box_margin_px: float = Field(default=2.0, ge=0.0)


class RegionGrowModel(_Strict):
    kind: Literal["regiongrow"] = "regiongrow"
    smoothing_mm: float = Field(default=1.0, gt=0.0)
    stats_radius_mm: float = Field(default=4.0, gt=0.0)
    tolerance_sd: float = Field(default=2.5, gt=0.0)
    band_voxels: int = Field(default=3, ge=1)
    window_mm: float = Field(
        default=40.0, gt=0.0, description="half-size of the first window a click grows in"
    )
    max_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0, description="larger regions are refused (background click)"
    )


class Sam2Model(_Strict):
    kind: Literal["sam2"]
    checkpoint: Path
    config: str = Field(
        default="configs/sam2.1/sam2.1_hiera_t.yaml",
        description="a config packaged with sam2 (hydra name)",
    )
    hydra_overrides: list[str] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="how slice embeddings are kept; float16 halves memory"
    )
    propagation: Propagation = Field(default_factory=Propagation)


class SamOnnxModel(_Strict):
    kind: Literal["sam-onnx"]
    encoder: Path
    decoder: Path
    family: Literal["auto", "sam1", "sam2"] = "auto"
    providers: list[str] | None = None
    threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0: auto")
    propagation: Propagation = Field(default_factory=Propagation)


ModelConfig = Annotated[RegionGrowModel | Sam2Model | SamOnnxModel, Field(discriminator="kind")]


class AcceptedLabel(_Strict):
    """How an accepted mask is described in the DICOM-SEG stored to Orthanc."""

    name: str = "Interactive segment"
    category: Code = Code(value="123037004", meaning="Anatomical Structure")
    type: Code = Code(value="85756007", meaning="Tissue")


class InteractiveConfig(_Strict):
    name: str = "AINODE interactive segmentation"
    host: str = "127.0.0.1"
    port: int = Field(default=8045, ge=1, le=65535)
    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_username: str | None = None
    orthanc_password: str | None = Field(default=None, repr=False)
    orthanc_timeout_s: float = Field(default=30.0, gt=0.0)
    models: dict[str, ModelConfig] = Field(default_factory=lambda: _default_models())
    max_total_bytes: int = Field(default=6 * GiB, gt=0, description="host memory of all sessions")
    max_session_bytes: int = Field(default=3 * GiB, gt=0, description="one session's share")
    idle_ttl_s: float = Field(
        default=1800.0, gt=0.0, description="a session idle this long expires"
    )
    sweep_interval_s: float = Field(default=30.0, gt=0.0)
    max_concurrent: int = Field(default=2, ge=1, description="segmentations computed at once")
    wait_timeout_s: float = Field(default=120.0, gt=0.0, description="longest wait for a slot")
    max_body_bytes: int = Field(
        default=1 << 20, gt=0, description="larger request bodies are refused (413)"
    )
    gpu_min_free_bytes: int = Field(
        default=2 * GiB, ge=0, description="keep slice embeddings on the GPU while this stays free"
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description="threads per computation for PyTorch and BLAS (0: the libraries' defaults); "
        "set once by serve(). Pools larger than the idle cores spin: 10-100x slower",
    )
    labels: dict[str, int] = Field(
        default_factory=lambda: {"segment": 1},
        description="label names and values reported to MONAI Label clients",
    )
    accepted_label: AcceptedLabel = Field(default_factory=AcceptedLabel)
    store_accepted: bool = Field(default=True, description="store accepted masks in Orthanc")
    users: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="HTTP Basic logins the service accepts on every route; empty: no login",
    )

    @model_validator(mode="after")
    def _check(self) -> InteractiveConfig:
        if not self.models:
            raise ValueError("configure at least one interactive model")
        if self.max_session_bytes > self.max_total_bytes:
            raise ValueError("max_session_bytes cannot exceed max_total_bytes")
        if any(value < 1 for value in self.labels.values()):
            raise ValueError("label values start at 1 (0 is background)")
        return self

    @property
    def orthanc_auth(self) -> tuple[str, str] | None:
        if self.orthanc_username and self.orthanc_password:
            return self.orthanc_username, self.orthanc_password
        return None

    @classmethod
    def from_settings(
        cls, settings: Settings, models_file: Path | None = None, **overrides: Any
    ) -> InteractiveConfig:
        """The node's settings (port, Orthanc) plus an optional YAML file; overrides win."""
        auth = orthanc_auth(settings)
        data: dict[str, Any] = {
            "port": settings.interactive_port,
            "orthanc_url": settings.orthanc_base_url,
            "orthanc_username": auth[0] if auth else None,
            "orthanc_password": auth[1] if auth else None,
            # The node's one login, checked here too, so a local process cannot skip the door.
            "users": dict([auth]) if settings.auth_enabled and auth else {},
        }
        if models_file is not None:
            data.update(load_models_file(models_file))
        data.update(overrides)
        return cls.model_validate(data)


def _default_models() -> dict[str, ModelConfig]:
    return {"regiongrow": RegionGrowModel()}


def load_models_file(path: Path) -> dict[str, Any]:
    """Read a YAML configuration file; model paths in it are relative to the file."""
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping (models: ..., max_total_bytes: ...)")
    for model in (loaded.get("models") or {}).values():
        if isinstance(model, dict):
            for key in ("checkpoint", "encoder", "decoder"):
                if key in model:
                    model[key] = str((path.parent / str(model[key])).resolve())
    return loaded
