"""The model registry (``configs/models.yaml``): which models exist, their labels and inputs.

One schema, validated when the file is loaded, so a typo is reported once, at start-up, with the
file, line and field, instead of as a failed job hours later. Pure (pydantic + PyYAML, no torch):
the Orthanc plugin imports it to check rules against the models, the worker to run them.

Weights locations are resolved against a models root (default: the repository's
``sample-data/models``); :meth:`Registry.availability` says, per model, whether its weights are
where the registry says, naming the path it looked at.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ainode.settings import REPO_ROOT
from ainode.totalseg_tasks import TotalSegmentatorTablesMissing, totalsegmentator_tasks

DEFAULT_MODELS_ROOT = REPO_ROOT / "sample-data" / "models"
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


class RegistryError(ValueError):
    """The registry file is invalid; the message lists every problem with file:line field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid model registry:\n  " + "\n  ".join(self.problems))


class UnknownModelError(KeyError):
    """No model or cascade has this id or alias."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(name)

    def __str__(self) -> str:
        return f"no model or cascade called {self.name!r}; known: {', '.join(self.known)}"


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


class Registry:
    """The validated models, looked up by id or alias (case-insensitive)."""

    def __init__(
        self, models: Sequence[ModelSpec], models_root: Path, source: Path | None = None
    ) -> None:
        self.models_root = models_root
        self.source = source
        self._models: dict[str, ModelSpec] = {}
        self._names: dict[str, str] = {}
        for spec in models:
            self._models[spec.id] = spec
            for name in (spec.id, *spec.aliases):
                self._names[name.lower()] = spec.id

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def ids(self) -> list[str]:
        return list(self._models)

    def get(self, id_or_alias: str) -> ModelSpec:
        model_id = self._names.get(id_or_alias.lower())
        if model_id is None:
            raise UnknownModelError(id_or_alias, self.ids())
        return self._models[model_id]

    def __contains__(self, id_or_alias: object) -> bool:
        return isinstance(id_or_alias, str) and id_or_alias.lower() in self._names

    def weights_path(self, spec: ModelSpec) -> Path | None:
        """The absolute weights location (relative paths are under the models root)."""
        if spec.weights is None:
            return None
        path = Path(spec.weights).expanduser()
        return path if path.is_absolute() else self.models_root / path

    def stages(self, id_or_alias: str) -> list[StageSpec]:
        """The stages to run: a cascade's, or the single model itself."""
        spec = self.get(id_or_alias)
        if spec.kind is ModelKind.CASCADE:
            return list(spec.stages)
        return [StageSpec(model=spec.id)]

    def output_labels(self, id_or_alias: str) -> list[LabelSpec]:
        """The labels a model or cascade produces (a cascade's last stage's, unless its own)."""
        spec = self.get(id_or_alias)
        if spec.kind is ModelKind.CASCADE and not spec.labels:
            return self.get(spec.stages[-1].model).labels
        return spec.labels

    def check(self, id_or_alias: str) -> Availability:
        spec = self.get(id_or_alias)
        if spec.kind is ModelKind.CASCADE:
            missing = []
            for stage in spec.stages:
                stage_state = self.check(stage.model)
                if not stage_state.available:
                    missing.append(f"stage {stage.model}: {stage_state.reason}")
            if missing:
                return Availability(available=False, reason="; ".join(missing))
            return Availability(available=True, reason="all stages available")
        return self._check_weights(spec)

    def availability(self) -> dict[str, Availability]:
        return {model_id: self.check(model_id) for model_id in self._models}

    def _check_weights(self, spec: ModelSpec) -> Availability:
        path = self.weights_path(spec)
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


def _folds_present(folders: Sequence[Path], defaults: InferenceParams) -> Availability:
    for folder in folders:
        for fold in defaults.folds:
            checkpoint = folder / f"fold_{fold}" / defaults.checkpoint_name
            if not checkpoint.is_file():
                return Availability(available=False, reason=f"checkpoint not found: {checkpoint}")
    return Availability(available=True, reason=f"weights found: {', '.join(map(str, folders))}")


# ---------------------------------------------------------------- loading with line marks


def _line_marks(
    node: yaml.Node,
    path: tuple[str, ...],
    marks: dict[tuple[str, ...], int],
    problems: list[tuple[tuple[str, ...], str]],
) -> None:
    """Record the 1-based line of every mapping key and sequence item, and duplicate keys."""
    marks.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                marks[child] = key_node.start_mark.line + 1
                problems.append((child, "duplicate key (YAML keeps only the last one)"))
            seen.add(key)
            marks[child] = key_node.start_mark.line + 1
            _line_marks(value_node, child, marks, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_marks(item, (*path, str(index)), marks, problems)


def _field(path: Sequence[str]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "(file)"


def _located(
    file: Path, marks: Mapping[tuple[str, ...], int], loc: Sequence[Any], message: str
) -> str:
    """``file:line field: message``; the line of the deepest part of ``loc`` in the file."""
    path = tuple(str(part) for part in loc)
    known: tuple[str, ...] = ()
    for depth in range(len(path), -1, -1):
        if path[:depth] in marks:
            known = path[:depth]
            break
    # Pydantic adds type tags (e.g. 'int', "literal['all']") to union locations: not fields.
    shown = [*known, *(part for part in path[len(known) :] if not _is_type_tag(part))]
    return f"{file}:{marks.get(known, 1)} {_field(shown)}: {message}"


def _is_type_tag(part: str) -> bool:
    return "[" in part or part in {"int", "float", "str", "bool", "none", "dict", "list", "tuple"}


def load_registry(path: Path | str, models_root: Path | str | None = None) -> Registry:
    """Read and validate a registry file.

    ``models_root`` wins over the file's ``models_root`` (relative to the file), which wins over
    the repository's ``sample-data/models``. Raises :class:`RegistryError` listing every problem
    as ``file:line field: message``, or FileNotFoundError.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise RegistryError([f"{file}:{line} (file): not valid YAML: {error}"]) from error
    if root_node is None or not isinstance(data, dict):
        raise RegistryError([f"{file}:1 (file): expected a mapping with a 'models' list"])
    marks: dict[tuple[str, ...], int] = {}
    duplicates: list[tuple[tuple[str, ...], str]] = []
    _line_marks(root_node, (), marks, duplicates)
    problems = [_located(file, marks, loc, message) for loc, message in duplicates]
    try:
        parsed = RegistryFile.model_validate(data)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            message = re.sub(r"^Value error, ", "", item["msg"])
            problems.append(_located(file, marks, item["loc"], message))
        raise RegistryError(problems) from error
    for loc, message in _cross_check(parsed.models):
        problems.append(_located(file, marks, loc, message))
    if problems:
        raise RegistryError(problems)
    if models_root is not None:
        root = Path(models_root)
    elif parsed.models_root is not None:
        root = (file.parent / parsed.models_root).resolve()
    else:
        root = DEFAULT_MODELS_ROOT
    return Registry(parsed.models, root.expanduser(), source=file)


def _cross_check(models: Sequence[ModelSpec]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Problems between entries: clashing names, cascades naming unknown or cascade stages."""
    owner: dict[str, str] = {}
    by_id = {spec.id: spec for spec in models}
    for index, spec in enumerate(models):
        for field_name, names in (("id", [spec.id]), ("aliases", spec.aliases)):
            for name in names:
                key = name.lower()
                if key in owner and owner[key] != spec.id:
                    yield (
                        ("models", index, field_name),
                        f"{name!r} is already used by model {owner[key]!r}",
                    )
                elif key in owner and field_name == "aliases":
                    yield (("models", index, field_name), f"{name!r} is listed twice")
                owner.setdefault(key, spec.id)
    lowered = {spec.id.lower(): spec for spec in models}
    for spec in models:
        for alias in spec.aliases:
            lowered.setdefault(alias.lower(), spec)
    for index, spec in enumerate(models):
        for stage_index, stage in enumerate(spec.stages):
            loc = ("models", index, "stages", stage_index, "model")
            target = lowered.get(stage.model.lower())
            if target is None:
                yield loc, f"unknown model {stage.model!r}; known: {', '.join(by_id)}"
            elif target.kind is ModelKind.CASCADE:
                yield loc, f"{stage.model!r} is itself a cascade; list its stages instead"
            else:
                try:
                    target.defaults.merged(stage.params)
                except ValidationError as error:
                    first = error.errors(include_url=False)[0]
                    yield (
                        ("models", index, "stages", stage_index, "params", *first["loc"]),
                        first["msg"],
                    )
