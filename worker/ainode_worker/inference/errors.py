"""Why a model could not run; each a specific class the worker reports as the job's error.

:class:`InferenceError` subclasses say what an operator must fix (weights, package, service,
parameters); they are raised instead of letting a library's own exception escape unexplained.
"""

from __future__ import annotations


class InferenceError(RuntimeError):
    """A model or pipeline could not produce a result."""


class WeightsMissingError(InferenceError):
    """The weights are not where the registry says; the message names the path."""


class BackendUnavailableError(InferenceError):
    """The software a backend needs is not installed in the worker's environment."""


class ModelLoadError(InferenceError):
    """The weights exist but do not load as the registry describes."""


class InputMismatchError(InferenceError):
    """The input series do not fit the model (channels, dimensions)."""


class ParamsError(InferenceError, ValueError):
    """A job's parameters are invalid for this pipeline."""


class GpuMemoryError(InferenceError):
    """The GPU still lacked the model's free memory after ``gpu_memory_wait_s`` of waiting."""


class RemoteServiceError(InferenceError):
    """An external inference service failed or answered something unexpected."""
