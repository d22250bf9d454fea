"""Series as the node's lists show them, and whether "Run AI" is offered, from Orthanc's JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ainode_plugin.series_summary import (
    fetch_summaries,
    list_summaries,
    pipeline_fit,
    summarise,
)

from ainode.registry import Availability, load_registry
from ainode.settings import REPO_ROOT

STUDY = {
    "ID": "study-1",
    "MainDicomTags": {
        "StudyDate": "20260101",
        "StudyDescription": "CT abdomen ",
        "StudyInstanceUID": "1.2.3",
        "AccessionNumber": "ACC1",
    },
    "PatientMainDicomTags": {
        "PatientName": "Doe^Jane",
        "PatientID": "PID-77",
        "PatientBirthDate": "19600101",
    },
}


def _series(series_id: str, modality: str, images: int, **tags: str) -> dict[str, Any]:
    return {
        "ID": series_id,
        "ParentStudy": "study-1",
        "Instances": [f"{series_id}-{i}" for i in range(images)],
        "MainDicomTags": {
            "Modality": modality,
            "SeriesInstanceUID": f"1.2.3.{series_id}",
            "SeriesNumber": "3",
            "SeriesDescription": "Portal venous",
            **tags,
        },
    }


def _orthanc(*series: dict[str, Any]) -> Any:
    by_uri: dict[str, Any] = {f"/series/{s['ID']}": s for s in series}
    by_uri["/studies/study-1"] = STUDY
    by_uri["/studies?expand"] = [STUDY]
    calls: list[str] = []

    def get_json(uri: str) -> Any:
        calls.append(uri)
        if uri.startswith("/series?expand"):
            return list(series)
        if uri not in by_uri:
            raise LookupError(uri)
        return by_uri[uri]

    get_json.calls = calls  # type: ignore[attr-defined]
    return get_json


def test_summary_names_what_a_person_reads_and_no_patient_attribute() -> None:
    summary = summarise(_series("a", "CT", 40), STUDY)
    assert summary.as_json() == {
        "series_id": "a",
        "study_id": "study-1",
        "series_uid": "1.2.3.a",
        "study_uid": "1.2.3",
        "study_date": "20260101",
        "study_description": "CT abdomen",
        "series_description": "Portal venous",
        "series_number": "3",
        "modality": "CT",
        "images": 40,
    }
    text = json.dumps(summary.as_json())
    for secret in ("Doe", "PID-77", "19600101"):
        assert secret not in text


def test_fetch_leaves_out_deleted_series_and_reads_each_study_once() -> None:
    get_json = _orthanc(_series("a", "CT", 40), _series("b", "SEG", 1))
    found = fetch_summaries(get_json, ["a", "gone", "b"])
    assert [s.series_id for s in found] == ["a", "b"]
    assert get_json.calls.count("/studies/study-1") == 1
    listed = list_summaries(get_json, 10)
    assert [(s.series_id, s.study_description) for s in listed] == [
        ("a", "CT abdomen"),
        ("b", "CT abdomen"),
    ]


@pytest.fixture(scope="module")
def registry() -> Any:
    return load_registry(REPO_ROOT / "configs" / "models.yaml")


@pytest.mark.parametrize(
    ("modality", "images", "available", "reason"),
    [
        ("CT", 40, True, ""),
        ("SEG", 1, True, "this is a SEG series, not images a model can read"),
        ("RTSTRUCT", 1, True, "this is a RTSTRUCT series, not images a model can read"),
        ("MR", 40, True, "demo-phantom reads CT series; this one is MR"),
        ("CT", 1, True, "demo-phantom needs a volume of at least 2 images; this has 1"),
        ("CT", 40, False, "demo-phantom is not available here: weights missing"),
    ],
)
def test_run_ai_is_offered_only_where_the_pipeline_could_take_the_series(
    registry: Any, modality: str, images: int, available: bool, reason: str
) -> None:
    spec = registry.get("demo-phantom")
    assert spec.input.modality == "CT"
    summary = summarise(_series("a", modality, images), STUDY)
    fit = pipeline_fit(summary, spec, Availability(available=available, reason="weights missing"))
    assert (fit.runnable, fit.reason) == (not reason, reason)
