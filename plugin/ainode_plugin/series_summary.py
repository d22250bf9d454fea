"""What a person reads about a series in the node's lists, and whether a pipeline could run on it.

The dashboard's jobs, the interactive page's picker and Orthanc Explorer's AI box show a series
by the attributes the routing rules read too: study date, study and series description,
modality, series number and number of images. Built here from Orthanc's main DICOM tags of the
series and its study only (``PatientMainDicomTags`` is never read), so the lists cannot show a
patient's name, ID or birth date.

:func:`pipeline_fit` says before a job is made whether a pipeline could take a series, with the
reason when not, so "Run AI" is offered only where it can work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ainode.registry import Availability, ModelSpec

GetJson = Callable[[str], Any]

# Modalities of objects that are no image volume a model could read: results, reports, plans.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "SR", "PR", "KO", "DOC", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "FID"}
)
MIN_SLICES = 2  # the worker builds a 3D volume; one image has no slice spacing


@dataclass(frozen=True)
class SeriesSummary:
    """One series as the node's lists show it (no patient attribute)."""

    series_id: str
    study_id: str
    series_uid: str
    study_uid: str
    study_date: str
    study_description: str
    series_description: str
    series_number: str
    modality: str
    images: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PipelineFit:
    """Whether a pipeline could take a series; ``reason`` says why not (empty when it can)."""

    pipeline: str
    name: str
    runnable: bool
    reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def summarise(series: Mapping[str, Any], study: Mapping[str, Any] | None) -> SeriesSummary:
    """A summary from Orthanc's ``/series/{id}`` and ``/studies/{id}`` answers."""
    tags = _tags(series)
    study_tags = _tags(study or {})
    instances = series.get("Instances")
    return SeriesSummary(
        series_id=str(series.get("ID", "")),
        study_id=str(series.get("ParentStudy", "")),
        series_uid=tags.get("SeriesInstanceUID", ""),
        study_uid=study_tags.get("StudyInstanceUID", ""),
        study_date=study_tags.get("StudyDate", ""),
        study_description=study_tags.get("StudyDescription", ""),
        series_description=tags.get("SeriesDescription", ""),
        series_number=tags.get("SeriesNumber", ""),
        modality=tags.get("Modality", ""),
        images=len(instances) if isinstance(instances, list) else 0,
    )


def fetch_summaries(get_json: GetJson, series_ids: Iterable[str]) -> list[SeriesSummary]:
    """Summaries of the series that still exist (a deleted one is left out), studies read once."""
    studies: dict[str, Mapping[str, Any] | None] = {}
    summaries = []
    for series_id in series_ids:
        try:
            series = get_json(f"/series/{series_id}")
        except LookupError:
            continue
        parent = str(series.get("ParentStudy", ""))
        if parent not in studies:
            try:
                studies[parent] = get_json(f"/studies/{parent}")
            except LookupError:
                studies[parent] = None
        summaries.append(summarise(series, studies[parent]))
    return summaries


def list_summaries(get_json: GetJson, limit: int) -> list[SeriesSummary]:
    """The first ``limit`` series on the node (two REST calls, whatever their number)."""
    series = get_json(f"/series?expand&since=0&limit={limit}")
    studies = {study["ID"]: study for study in get_json("/studies?expand") if "ID" in study}
    return [summarise(s, studies.get(str(s.get("ParentStudy", "")))) for s in series]


def pipeline_fit(
    summary: SeriesSummary, spec: ModelSpec, availability: Availability | None
) -> PipelineFit:
    """Whether ``spec`` could run on the series, judged from what is known before a job."""
    expected = spec.input.modality.upper()
    modality = summary.modality.upper()
    reason = ""
    if modality in NON_IMAGE_MODALITIES:
        reason = f"this is a {modality or 'non-image'} series, not images a model can read"
    elif modality != expected:
        reason = f"{spec.id} reads {expected} series; this one is {modality or 'of no modality'}"
    elif summary.images < MIN_SLICES:
        reason = (
            f"{spec.id} needs a volume of at least {MIN_SLICES} images; this has {summary.images}"
        )
    elif availability is not None and not availability.available:
        reason = f"{spec.id} is not available here: {availability.reason}"
    return PipelineFit(pipeline=spec.id, name=spec.name, runnable=not reason, reason=reason)


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    tags = resource.get("MainDicomTags")
    if not isinstance(tags, Mapping):
        return {}
    return {str(k): v.strip() for k, v in tags.items() if isinstance(v, str)}
