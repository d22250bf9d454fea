"""The facts routing rules decide on, built from Orthanc's REST answers about a series.

Orthanc gives numbers as text and multi-valued attributes as one backslash-joined string; the
facts normalise both (see :func:`ainode.routing.normalize_value`). Patient-identifying
attributes are dropped here, so neither a rule, a log line nor a job record can carry them.

The builders take already-fetched JSON so they are testable without Orthanc;
:func:`fetch_series_facts` fetches what they need through any ``get_json(uri)`` callable
(the plugin passes one over ``orthanc.RestApiGet``). It reads one instance's tags from disk,
not the whole series (``/shared-tags`` would read every file), so it stays cheap on a
callback thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ainode.routing import AttributeValues, cap_values, is_identifying, normalize_value

GetJson = Callable[[str], Any]

# Orthanc instance metadata -> the synthetic attribute rules use for it.
_METADATA_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "RemoteAET": ("CallingAET", "RemoteAET"),
    "CalledAET": ("CalledAET",),
    "RemoteIP": ("RemoteIP",),
    "Origin": ("Origin",),
}
_MAX_VALUE_CHARS = 1024  # longer text values (e.g. embedded documents) are of no use to rules


class FactsError(Exception):
    """Orthanc's answers about a series lack what routing needs (a bug or a deleted series)."""


@dataclass(frozen=True)
class SeriesFacts:
    """What the rules may know about one series: identifiers, attributes, instance count."""

    series_id: str  # Orthanc's id of the series
    study_id: str  # Orthanc's id of its study
    series_uid: str
    study_uid: str
    instance_count: int
    fingerprint: str  # identifies the exact set of instances (see content_fingerprint)
    attributes: Mapping[str, AttributeValues] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, keyword: str) -> AttributeValues:
        return self.attributes.get(keyword, ())

    def first(self, keyword: str) -> str | None:
        values = self.get(keyword)
        return values[0] if values else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for a dry-run REST answer."""
        return {
            "series_id": self.series_id,
            "study_id": self.study_id,
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "instance_count": self.instance_count,
            "fingerprint": self.fingerprint,
            "attributes": {key: list(values) for key, values in sorted(self.attributes.items())},
        }


def content_fingerprint(instance_ids: Iterable[str]) -> str:
    """A digest of the sorted Orthanc instance ids of a series.

    Orthanc derives an instance's id from its patient, study, series and SOP instance UIDs, so
    equal fingerprints mean the very same set of SOP instances: a re-sent identical series
    keeps its fingerprint, a series that gained (or lost) instances gets a new one.
    """
    digest = hashlib.sha256()
    for instance_id in sorted(set(instance_ids)):
        digest.update(instance_id.encode("ascii", "replace"))
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def facts_from_orthanc(
    series: Mapping[str, Any],
    *,
    study: Mapping[str, Any] | None = None,
    instance_tags: Mapping[str, Any] | None = None,
    instance_metadata: Mapping[str, Any] | None = None,
) -> SeriesFacts:
    """Facts from Orthanc's JSON: ``/series/{id}``, ``/studies/{id}``, one instance's
    ``/instances/{id}/simplified-tags`` (or ``/series/{id}/shared-tags?simplify``) and its
    ``/instances/{id}/metadata?expand``.

    Later sources win on conflict: instance tags, then study and series main tags, then the
    node's own values (InstanceCount, CallingAET, ...).
    """
    series_id = _text(series, "ID", "the series")
    main = _mapping(series.get("MainDicomTags"), "the series' MainDicomTags")
    instances = series.get("Instances")
    if not isinstance(instances, list) or not all(isinstance(i, str) for i in instances):
        raise FactsError(f"Orthanc's answer for series {series_id} has no list of Instances")
    study_main = _mapping(study.get("MainDicomTags"), "the study's MainDicomTags") if study else {}
    tags = _mapping(instance_tags, "the instance tags") if instance_tags is not None else {}

    attributes: dict[str, AttributeValues] = {}
    for source in (tags, study_main, main):
        attributes.update(_dicom_attributes(source))
    if instance_metadata:
        for name, keywords in _METADATA_ATTRIBUTES.items():
            for keyword in keywords:
                values = cap_values(keyword, normalize_value(instance_metadata.get(name)))
                if values:
                    attributes[keyword] = values
                else:
                    attributes.pop(keyword, None)
    attributes["InstanceCount"] = (str(len(instances)),)

    # Identifiers as sent, not capped like the values rules see: the job names the real series.
    series_uid = _uncapped(attributes, "SeriesInstanceUID", main, tags)
    study_uid = _uncapped(attributes, "StudyInstanceUID", main, study_main, tags)
    if series_uid is None or study_uid is None:
        raise FactsError(
            f"series {series_id}: Orthanc reports no SeriesInstanceUID or StudyInstanceUID"
        )
    parent = series.get("ParentStudy")
    return SeriesFacts(
        series_id=series_id,
        study_id=parent if isinstance(parent, str) else "",
        series_uid=series_uid,
        study_uid=study_uid,
        instance_count=len(instances),
        fingerprint=content_fingerprint(instances),
        attributes=MappingProxyType(attributes),
    )


def fetch_series_facts(get_json: GetJson, series_id: str) -> SeriesFacts:
    """Fetch what :func:`facts_from_orthanc` needs: four small REST calls.

    ``get_json(uri)`` returns the decoded JSON of a GET on Orthanc's REST API (e.g.
    ``json.loads(orthanc.RestApiGet(uri))``) and raises on failure.
    """
    series = get_json(f"/series/{series_id}")
    if not isinstance(series, Mapping):
        raise FactsError(f"Orthanc's answer for series {series_id} is not a JSON object")
    instances = series.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise FactsError(f"series {series_id} has no instances")
    probe = sorted(str(instance) for instance in instances)[0]  # the same one every time
    parent = series.get("ParentStudy")
    study = get_json(f"/studies/{parent}") if isinstance(parent, str) else None
    return facts_from_orthanc(
        series,
        study=study if isinstance(study, Mapping) else None,
        instance_tags=_as_mapping(get_json(f"/instances/{probe}/simplified-tags")),
        instance_metadata=_as_mapping(get_json(f"/instances/{probe}/metadata?expand")),
    )


def _dicom_attributes(tags: Mapping[str, Any]) -> dict[str, AttributeValues]:
    """Keyword -> values for the plain attributes of a simplified-tags mapping.

    Sequences, binary data, unknown (private) tags and patient-identifying attributes are left
    out: rules cannot use them, and what is not kept cannot leak. Values are capped at their
    VR's maximum length, so no value makes a rule take longer than a valid one would.
    """
    result: dict[str, AttributeValues] = {}
    for keyword, value in tags.items():
        if not isinstance(keyword, str) or not keyword.isidentifier() or is_identifying(keyword):
            continue
        if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
            continue
        if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
            continue  # a sequence
        values = cap_values(keyword, normalize_value(value))
        if values:
            result[keyword] = values
    return result


def _uncapped(
    attributes: Mapping[str, AttributeValues], keyword: str, *sources: Mapping[str, Any]
) -> str | None:
    """The first value of ``keyword`` in the first source holding it, before any cap."""
    for source in sources:
        values = normalize_value(source.get(keyword))
        if values:
            return values[0]
    return _first(attributes, keyword)


def _first(attributes: Mapping[str, AttributeValues], keyword: str) -> str | None:
    values = attributes.get(keyword, ())
    return values[0] if values else None


def _text(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FactsError(f"Orthanc's answer for {what} has no {key}")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FactsError(f"Orthanc's answer lacks {what} (expected a JSON object)")
    return value


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None
