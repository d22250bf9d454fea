"""The plugin refuses, before queueing, what a series' tags already show no model can use."""

from __future__ import annotations

from routing_helpers import one_rule

from ainode.inputcheck import VolumeBudget
from ainode.routing import GUARD_INPUT, GUARD_NON_IMAGE_CLASS

CT_RULE = "Modality: CT"
GOOD = {
    "Modality": "CT",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
    "BitsAllocated": "16",
    "SamplesPerPixel": "1",
    "PixelSpacing": "0.7\\0.7",
    "ImageOrientationPatient": "1\\0\\0\\0\\1\\0",
    "Rows": "512",
    "Columns": "512",
    "InstanceCount": "300",
}
BUDGET = VolumeBudget(max_voxels=2**30, max_bytes=64 * 2**30)


def _decide(**changes: str) -> tuple[bool, str, str]:
    decision = one_rule(CT_RULE).evaluate({**GOOD, **changes}, budget=BUDGET)[0]
    return decision.run, decision.decided_by, decision.reason


def test_a_good_ct_series_runs() -> None:
    assert _decide()[0]


def test_seg_relabelled_ct_is_guarded_by_its_sop_class() -> None:
    run, by, reason = _decide(SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4")
    assert (run, by) == (False, GUARD_NON_IMAGE_CLASS)
    assert "segmentation" in reason


def test_rtstruct_and_sr_relabelled_ct_are_guarded() -> None:
    for uid in ("1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.88.22"):
        assert _decide(SOPClassUID=uid)[:2] == (False, GUARD_NON_IMAGE_CLASS)


def test_bad_tags_are_refused_with_the_reason() -> None:
    cases = {
        "BitsAllocated 1 is not a valid pixel format for CT": {"BitsAllocated": "1"},
        "BitsAllocated 64 is not a valid pixel format for CT": {"BitsAllocated": "64"},
        "colour images are not supported": {"SamplesPerPixel": "3"},
        "PixelSpacing must be positive and finite": {"PixelSpacing": "inf\\inf"},
        "PixelSpacing must be positive": {"PixelSpacing": "0\\0"},
        "not a patient image's spacing": {"PixelSpacing": "1e308\\1e308"},
        "ImageOrientationPatient must be finite": {"ImageOrientationPatient": "1\\0\\0\\0\\nan\\0"},
        "not two orthogonal unit vectors": {"ImageOrientationPatient": "0\\0\\0\\0\\0\\0"},
        "no pixels": {"Rows": "0"},
        "job_max_voxels": {"Rows": "65535", "Columns": "65535"},
    }
    for expected, changes in cases.items():
        run, by, reason = _decide(**changes)
        assert (run, by) == (False, GUARD_INPUT), (changes, reason)
        assert expected in reason, (changes, reason)


def test_the_input_guard_applies_only_to_series_a_rule_would_run() -> None:
    decision = one_rule(CT_RULE).evaluate({**GOOD, "Modality": "MR", "BitsAllocated": "64"})[0]
    assert decision.decided_by == "no-rule-matched"
