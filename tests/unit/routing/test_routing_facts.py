"""Series facts from Orthanc's JSON, as Orthanc 1.10.1 really answers.

The JSON under ``data/orthanc-1.10.1/`` was captured from Debian's Orthanc 1.10.1 after a
12-slice phantom CT (ainode.phantoms, synthetic patient) was sent by ``storescu -aet
CT_SCANNER``, and one instance (Manufacturer AINODE, new series) uploaded by REST.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ainode_plugin.facts import (
    FactsError,
    SeriesFacts,
    content_fingerprint,
    facts_from_orthanc,
    fetch_series_facts,
)

from ainode.routing import GUARD_NODE_OUTPUT, load_rules

DATA = Path(__file__).parent / "data" / "orthanc-1.10.1"
REPO_ROOT = Path(__file__).resolve().parents[3]


def load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text())


def ct_facts() -> SeriesFacts:
    return facts_from_orthanc(
        load("ct-series"),
        study=load("study"),
        instance_tags=load("ct-instance-simplified-tags"),
        instance_metadata=load("ct-instance-metadata"),
    )


def test_facts_of_a_ct_series_sent_by_dicom() -> None:
    facts = ct_facts()
    series = load("ct-series")
    assert facts.series_id == series["ID"]
    assert facts.study_id == series["ParentStudy"]
    assert facts.series_uid == series["MainDicomTags"]["SeriesInstanceUID"]
    assert facts.study_uid == load("study")["MainDicomTags"]["StudyInstanceUID"]
    assert facts.instance_count == 12
    assert facts.get("InstanceCount") == ("12",)
    assert facts.get("Modality") == ("CT",)
    assert facts.get("ImageType") == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert facts.first("SliceThickness") == "2.5"
    assert facts.first("SeriesDescription") == "Abdomen 2.5mm"
    assert facts.get("CallingAET") == facts.get("RemoteAET") == ("CT_SCANNER",)
    assert facts.first("CalledAET") == "AINODE"
    assert facts.first("Origin") == "DicomProtocol"
    assert "PixelData" not in facts.attributes  # null in Orthanc's JSON: no value


def test_facts_carry_no_patient_identity() -> None:
    facts = ct_facts()
    text = json.dumps(facts.as_dict())
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert keyword not in facts.attributes
    for value in ("Phantom^Test", "PHANTOM-0001", "19700101", "ACC0001"):
        assert value not in text
    assert facts.first("PatientSex") == "O"  # not identifying; rules may use it


def test_default_rules_run_on_the_captured_ct() -> None:
    rules = load_rules(REPO_ROOT / "routing-rules.yaml", known_pipelines={"demo-phantom"})
    decision = rules.evaluate(ct_facts())[0]
    assert decision.run and decision.decided_by == "ct-demo"


def test_rest_upload_of_a_node_result() -> None:
    facts = facts_from_orthanc(
        load("rest-series"),
        instance_tags=load("rest-instance-simplified-tags"),
        instance_metadata=load("rest-instance-metadata"),
    )
    assert facts.first("Origin") == "RestApi"
    assert "CallingAET" not in facts.attributes  # Orthanc reports "" for REST uploads
    assert facts.instance_count == 1
    rules = load_rules(REPO_ROOT / "routing-rules.yaml")
    assert rules.evaluate(facts)[0].decided_by == GUARD_NODE_OUTPUT


def test_fetch_series_facts_makes_four_small_requests() -> None:
    series = load("ct-series")
    probe = sorted(series["Instances"])[0]
    answers = {
        f"/series/{series['ID']}": series,
        f"/studies/{series['ParentStudy']}": load("study"),
        f"/instances/{probe}/simplified-tags": load("ct-instance-simplified-tags"),
        f"/instances/{probe}/metadata?expand": load("ct-instance-metadata"),
    }
    asked: list[str] = []

    def get_json(uri: str) -> Any:
        asked.append(uri)
        return answers[uri]

    facts = fetch_series_facts(get_json, series["ID"])
    assert sorted(asked) == sorted(answers)
    assert facts.get("CallingAET") == ("CT_SCANNER",)
    assert facts.fingerprint == ct_facts().fingerprint


def test_fingerprint_identifies_the_set_of_instances() -> None:
    ids = load("ct-series")["Instances"]
    assert content_fingerprint(ids) == content_fingerprint(reversed(ids))
    assert content_fingerprint(ids) == content_fingerprint([*ids, ids[0]])
    assert content_fingerprint(ids) != content_fingerprint([*ids, "another-instance"])
    assert content_fingerprint(ids) != content_fingerprint(ids[:-1])


def test_malformed_answers_raise_facts_error() -> None:
    series = load("ct-series")
    with pytest.raises(FactsError, match="Instances"):
        facts_from_orthanc({**series, "Instances": None})
    with pytest.raises(FactsError, match="MainDicomTags"):
        facts_from_orthanc({"ID": "x", "Instances": []})
    with pytest.raises(FactsError, match="StudyInstanceUID"):
        facts_from_orthanc(series)  # no study, no instance tags: no study UID
    with pytest.raises(FactsError, match="no instances"):
        fetch_series_facts(lambda uri: {**series, "Instances": []}, series["ID"])


def test_values_are_capped_for_rules_but_identifiers_kept_as_sent() -> None:
    """A UID over the 64 characters of VR UI still names the real series (its job must be
    found by it); a description over LO's 64 is cut for rules."""
    long_uid = "1.2." + "3" * 140
    series = load("ct-series")
    series["MainDicomTags"] = {
        **series["MainDicomTags"],
        "SeriesInstanceUID": long_uid,
        "SeriesDescription": "a" * 500 + "!",
    }
    tags = load("ct-instance-simplified-tags")
    facts = facts_from_orthanc(series, study=load("study"), instance_tags=tags)
    assert facts.series_uid == long_uid
    assert facts.get("SeriesInstanceUID") == (long_uid[:64],)
    assert facts.get("SeriesDescription") == ("a" * 64,)
