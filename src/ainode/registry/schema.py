"""The schema of ``configs/models.yaml``: models, their labels, inputs, run-time defaults.

Pure pydantic: a typo is refused when the file is loaded (:mod:`.loader`) rather than when a job
runs. Contracts crossing processes (the plugin checks rules against these models, the worker runs
them) so both sides validate the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Code(BaseModel):
    """A coded concept (e.g. SNOMED CT), as DICOM's (value, scheme, meaning) triple."""

    value: str
    scheme: str = "SCT"
    meaning: str


class LabelSpec(BaseModel):
    """One class of a model's label map and how it is described in DICOM exports."""

    value: int = Field(ge=1, le=65535, description="voxel value in the label map")
    name: str
    category: Code = Field(
        description="SegmentedPropertyCategory, e.g. SCT 123037004 Anatomical Structure"
    )
    type: Code = Field(description="SegmentedPropertyType, e.g. SCT 10200004 Liver")
    anatomic_region: Code | None = None
    color: tuple[int, int, int] | None = Field(default=None, description="RGB 0-255 for viewers")


class ModelKind(StrEnum):
    NNUNET = "nnunet"
    TOTALSEGMENTATOR = "totalsegmentator"
    ONNX = "onnx"
    BIOMEDPARSE = "biomedparse"
    CASCADE = "cascade"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _first_fold() -> list[int | Literal["all"]]:
    return [0]


class InferenceParams(_Strict):
    """Run-time choices; a model's ``defaults`` in the registry, overridable per job."""

    folds: list[int | Literal["all"]] = Field(default_factory=_first_fold, min_length=1)
    checkpoint_name: str = Field(default="checkpoint_final.pth", pattern=r"^[A-Za-z0-9._-]+$")
    tta: bool = Field(default=False, description="test-time augmentation (mirroring)")
    tile_step_size: float = Field(default=0.5, gt=0.0, le=1.0, description="sliding-window step")
    proba_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="drop components whose mean probability is lower"
    )
    min_component_mm3: float = Field(default=0.0, ge=0.0, description="drop smaller components")
    classes: list[int] | None = Field(default=None, description="label values to keep; None: all")
    return_probabilities: bool = Field(
        default=False, description="keep the probability maps in the result (memory!)"
    )

    @property
    def needs_probabilities(self) -> bool:
        return (
            self.return_probabilities
            or self.proba_threshold is not None
            or self.min_confidence is not None
        )

    def merged(self, overrides: Mapping[str, Any]) -> InferenceParams:
        """These values with ``overrides`` applied, validated (unknown keys are errors)."""
        return InferenceParams.model_validate({**self.model_dump(), **dict(overrides)})


class InputSpec(_Strict):
    """What a model reads: the modality it expects and which series feed which channel.

    ``channels`` are named in channel order; ``main`` is the job's own series, any other name is
    a key of the job's ``extra_series`` (e.g. ``ADC``), resampled onto the main series' grid.
    """

    modality: str = "CT"
    channels: list[str] = Field(default_factory=lambda: ["main"], min_length=1)

    @model_validator(mode="after")
    def _main_first(self) -> InputSpec:
        if self.channels[0] != "main":
            raise ValueError("the first channel must be 'main' (the job's own series)")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channel names must be unique")
        return self


class LinkMode(StrEnum):
    CROP = "crop"  # run the stage inside the bounding box of the previous output
    INTERSECT = "intersect"  # keep the stage's components that overlap the previous output
    CHANNEL = "channel"  # give the previous output to the stage as an extra input channel


class StageLink(_Strict):
    """How the previous stage's output feeds this stage."""

    mode: LinkMode
    labels: list[int] | None = Field(default=None, description="previous labels used; None: all")
    padding_mm: float | tuple[float, float, float] = Field(
        default=10.0, description="crop: margin around the bounding box (slice, row, column)"
    )
    min_overlap: float = Field(
        default=0.1, ge=0.0, le=1.0, description="intersect: fraction of a component inside"
    )

    def padding(self) -> tuple[float, float, float]:
        if isinstance(self.padding_mm, tuple):
            return self.padding_mm
        return (self.padding_mm, self.padding_mm, self.padding_mm)


class StageSpec(_Strict):
    model: str
    from_previous: StageLink | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="overrides of its defaults")


class TotalSegmentatorOptions(_Strict):
    task: str = Field(description="TotalSegmentator task, e.g. total, lung_vessels")


class OnnxOptions(_Strict):
    """Intensity preprocessing and output meaning of an exported network."""

    clip: tuple[float, float] | None = None
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0.0)
    output: Literal["logits", "probabilities"] = "logits"
    patch_size: tuple[int, int, int] | None = Field(
        default=None, description="for models with dynamic input dims; else read from the model"
    )


class BiomedParseOptions(_Strict):
    """Text prompts per label; in-process (``weights`` = checkpoint) or an HTTP service."""

    prompts: dict[int, str] = Field(default_factory=dict, description="label value -> prompt")
    service_url: str | None = Field(
        default=None, description="e.g. http://gpu-host:8000/api/biomedparse/v1"
    )
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    timeout_s: float = Field(default=600.0, gt=0.0)
    package: str = Field(default="biomedparse", description="module of the in-process package")


class ModelSpec(_Strict):
    """One entry of the registry: a single model or a cascade of models."""

    id: str = Field(pattern=_ID_PATTERN)
    name: str
    aliases: list[str] = Field(default_factory=list)
    kind: ModelKind
    version: str
    description: str = ""
    weights: str | None = Field(
        default=None, description="folder or file; relative paths are under the models root"
    )
    labels: list[LabelSpec] = Field(default_factory=list)
    defaults: InferenceParams = Field(default_factory=InferenceParams)
    min_gpu_memory_mb: int = Field(default=0, ge=0)
    input: InputSpec = Field(default_factory=InputSpec)
    stages: list[StageSpec] = Field(default_factory=list)
    totalsegmentator: TotalSegmentatorOptions | None = None
    onnx: OnnxOptions | None = None
    biomedparse: BiomedParseOptions | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError("label values must be unique")
        if self.kind is ModelKind.CASCADE:
            if len(self.stages) < 2:
                raise ValueError("a cascade needs at least two stages")
            if self.weights is not None:
                raise ValueError("a cascade has no weights of its own; its stages do")
            if self.stages[0].from_previous is not None:
                raise ValueError("the first stage of a cascade has no previous stage to use")
            for index, stage in enumerate(self.stages[1:], start=1):
                if stage.from_previous is None:
                    raise ValueError(
                        f"stage {index} needs 'from_previous' (crop/intersect/channel)"
                    )
            return self
        if self.stages:
            raise ValueError(f"'stages' is only for kind cascade, not {self.kind}")
        if not self.labels:
            raise ValueError("a model needs at least one label")
        if self.kind is ModelKind.TOTALSEGMENTATOR and self.totalsegmentator is None:
            raise ValueError("a totalsegmentator model needs 'totalsegmentator: {task: ...}'")
        if self.totalsegmentator is not None and self.kind is not ModelKind.TOTALSEGMENTATOR:
            raise ValueError("'totalsegmentator' options are only for kind totalsegmentator")
        if self.kind in (ModelKind.NNUNET, ModelKind.ONNX, ModelKind.TOTALSEGMENTATOR) and (
            self.weights is None
        ):
            raise ValueError(f"a {self.kind} model needs 'weights'")
        if self.kind is ModelKind.BIOMEDPARSE:
            options = self.biomedparse or BiomedParseOptions()
            if self.weights is None and options.service_url is None:
                raise ValueError("biomedparse needs 'weights' (checkpoint) or 'service_url'")
            unknown = set(options.prompts) - set(values)
            if unknown:
                raise ValueError(f"biomedparse prompts for unknown label values {sorted(unknown)}")
        if self.defaults.classes is not None:
            unknown = set(self.defaults.classes) - set(values)
            if unknown:
                raise ValueError(f"defaults.classes names unknown label values {sorted(unknown)}")
        return self

    def prompt(self, label: LabelSpec) -> str:
        """The BiomedParse text prompt of a label (its name unless configured)."""
        options = self.biomedparse or BiomedParseOptions()
        return options.prompts.get(label.value, label.name)


class RegistryFile(_Strict):
    """The whole ``models.yaml``."""

    models_root: str | None = Field(
        default=None, description="relative to this file; default: the repo's sample-data/models"
    )
    models: list[ModelSpec] = Field(min_length=1)


class Availability(BaseModel):
    """Whether a model can run here, and why not (naming the path looked at)."""

    model_config = ConfigDict(frozen=True)

    available: bool
    reason: str
