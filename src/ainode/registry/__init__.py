"""The model registry (``configs/models.yaml``): which models exist, their labels and inputs.

One schema (:mod:`.schema`), validated when the file is loaded (:mod:`.loader`), so a typo is
reported once, at start-up, with the file, line and field, instead of as a failed job hours
later; weights are looked for where :mod:`.weights` says. Pure (pydantic + PyYAML, no torch):
the Orthanc plugin imports it to check rules against the models, the worker to run them.
"""

from .loader import RegistryError, load_registry
from .lookup import Registry, UnknownModelError
from .schema import (
    Availability,
    BiomedParseOptions,
    Code,
    InferenceParams,
    InputSpec,
    LabelSpec,
    LinkMode,
    ModelKind,
    ModelSpec,
    OnnxOptions,
    RegistryFile,
    StageLink,
    StageSpec,
    TotalSegmentatorOptions,
)
from .weights import (
    DEFAULT_MODELS_ROOT,
    check_weights,
    nnunet_model_folder,
    totalsegmentator_folders,
    totalsegmentator_results_dir,
)

__all__ = [
    "DEFAULT_MODELS_ROOT",
    "Availability",
    "BiomedParseOptions",
    "Code",
    "InferenceParams",
    "InputSpec",
    "LabelSpec",
    "LinkMode",
    "ModelKind",
    "ModelSpec",
    "OnnxOptions",
    "Registry",
    "RegistryError",
    "RegistryFile",
    "StageLink",
    "StageSpec",
    "TotalSegmentatorOptions",
    "UnknownModelError",
    "check_weights",
    "load_registry",
    "nnunet_model_folder",
    "totalsegmentator_folders",
    "totalsegmentator_results_dir",
]
