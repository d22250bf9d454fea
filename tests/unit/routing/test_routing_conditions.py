"""Every operator and combinator, on normalised facts as Orthanc gives them (numbers as text)."""

from __future__ import annotations

import pytest
from routing_helpers import holds, one_rule

from ainode.routing import normalize_value

CT = {"Modality": "CT", "InstanceCount": "120", "SliceThickness": "2.50"}


def test_equals_shorthand_and_operator() -> None:
    assert holds("Modality: CT", CT)
    assert not holds("Modality: MR", CT)
    assert holds("Modality: {equals: CT}", CT)
    assert not holds("Modality: {equals: ct}", CT)  # text compares exactly by default
    assert holds("Modality: {equals: ct, ignore_case: true}", CT)


def test_equals_a_number_compares_numerically() -> None:
    assert holds("SliceThickness: 2.5", CT)  # "2.50" == 2.5
    assert holds("InstanceCount: 120", CT)
    assert not holds("SliceThickness: '2.5'", CT)  # quoted: text, and "2.50" != "2.5"
    assert not holds("SliceThickness: 2.5", {"SliceThickness": "thin"})


def test_in() -> None:
    assert holds("BodyPartExamined: {in: [CHEST, ABDOMEN]}", {"BodyPartExamined": "ABDOMEN"})
    assert not holds("BodyPartExamined: {in: [CHEST, ABDOMEN]}", {"BodyPartExamined": "HEAD"})
    assert holds(
        "BodyPartExamined: {in: [chest, abdomen], ignore_case: true}",
        {"BodyPartExamined": "Abdomen"},
    )
    assert holds("SliceThickness: {in: [1, 2.5]}", CT)


def test_matches_searches_and_can_be_anchored() -> None:
    facts = {"SeriesDescription": "CT Abdomen 2.5mm"}
    assert holds("SeriesDescription: {matches: 'Abdomen'}", facts)
    assert not holds("SeriesDescription: {matches: 'abdomen'}", facts)
    assert holds("SeriesDescription: {matches: 'abdomen', ignore_case: true}", facts)
    assert not holds("SeriesDescription: {matches: '^Abdomen'}", facts)
    assert holds("SeriesDescription: {matches: '^CT .*mm$'}", facts)


@pytest.mark.parametrize(
    ("operator", "limit", "expected"),
    [
        ("gt", 120, False),
        ("gt", 119, True),
        ("ge", 120, True),
        ("ge", 121, False),
        ("lt", 120, False),
        ("lt", 120.5, True),
        ("le", 120, True),
        ("le", 119.9, False),
    ],
)
def test_numeric_comparisons(operator: str, limit: float, expected: bool) -> None:
    assert holds(f"InstanceCount: {{{operator}: {limit}}}", CT) is expected


def test_several_operators_must_all_hold() -> None:
    assert holds("SliceThickness: {ge: 1, le: 3}", CT)
    assert not holds("SliceThickness: {ge: 1, le: 2}", CT)


def test_comparisons_skip_values_that_are_not_numbers() -> None:
    assert not holds("SliceThickness: {ge: 0}", {"SliceThickness": "unknown"})
    assert holds("SliceThickness: {ge: 0}", {"SliceThickness": ["unknown", "1.0"]})


def test_exists_and_missing() -> None:
    assert holds("ContrastBolusAgent: {exists: true}", {"ContrastBolusAgent": "IODINE"})
    assert not holds("ContrastBolusAgent: {exists: true}", {"ContrastBolusAgent": ""})
    assert holds("ContrastBolusAgent: {missing: true}", {"ContrastBolusAgent": "  "})
    assert holds("ContrastBolusAgent: {missing: true}", {})
    assert holds("ContrastBolusAgent: {exists: false}", {})
    assert not holds("ContrastBolusAgent: {missing: true}", {"ContrastBolusAgent": "IODINE"})


def test_multi_valued_attribute_matches_if_any_value_matches() -> None:
    orthanc_style = {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}
    list_style = {"ImageType": ["DERIVED", "SECONDARY", "MPR"]}
    assert holds("ImageType: AXIAL", orthanc_style)
    assert holds("ImageType: {in: [LOCALIZER, AXIAL]}", orthanc_style)
    assert holds("ImageType: {matches: '^PRIM'}", orthanc_style)
    assert not holds("ImageType: AXIAL", list_style)
    assert holds("ImageType: MPR", list_style)
    assert holds("PixelSpacing: {lt: 0.5}", {"PixelSpacing": "0.8\\0.4"})


def test_a_test_on_a_missing_attribute_fails_and_not_turns_it_around() -> None:
    assert not holds("Manufacturer: SIEMENS", CT)
    assert not holds("InstanceCount: {ge: 1}", {"Modality": "CT"})
    assert holds("not: {Manufacturer: SIEMENS}", CT)


def test_all_any_not() -> None:
    rules = """
    all:
      - Modality: CT
      - any:
          - BodyPartExamined: CHEST
          - SeriesDescription: {matches: thorax, ignore_case: true}
      - not: {ImageType: LOCALIZER}
    """
    chest = {"Modality": "CT", "BodyPartExamined": "CHEST", "ImageType": "ORIGINAL\\AXIAL"}
    thorax = {"Modality": "CT", "SeriesDescription": "Thorax 1mm", "ImageType": "AXIAL"}
    scout = {**chest, "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}
    head = {"Modality": "CT", "BodyPartExamined": "HEAD"}
    mr = {**chest, "Modality": "MR"}
    assert holds(rules, chest)
    assert holds(rules, thorax)
    assert not holds(rules, scout)
    assert not holds(rules, head)
    assert not holds(rules, mr)


def test_several_keys_in_one_mapping_all_must_hold() -> None:
    when = "{Modality: CT, BodyPartExamined: CHEST}"
    assert holds(when, {"Modality": "CT", "BodyPartExamined": "CHEST"})
    assert not holds(when, {"Modality": "CT", "BodyPartExamined": "HEAD"})


def test_synthetic_attributes() -> None:
    facts = {"Modality": "CT", "CallingAET": "CT_SCANNER", "InstanceCount": 9}
    assert holds("CallingAET: {in: [CT_SCANNER, CT2]}", facts)
    assert not holds("InstanceCount: {ge: 10}", facts)


def test_why_not_names_the_failing_test() -> None:
    rules = one_rule("all: [{Modality: CT}, {InstanceCount: {ge: 10}}]")
    decision = rules.evaluate({"Modality": "CT", "InstanceCount": "4"})[0]
    assert not decision.run
    assert "InstanceCount is '4', which fails: >= 10" in decision.reason
    missing = rules.evaluate({"Modality": "CT"})[0]
    assert "InstanceCount is missing" in missing.reason
    excluded = one_rule("not: {Modality: CT}").evaluate({"Modality": "CT"})[0]
    assert "excluded by not: Modality equals 'CT'" in excluded.reason
    neither = one_rule("any: [{Modality: MR}, {Modality: PT}]").evaluate({"Modality": "CT"})[0]
    assert "none of the alternatives" in neither.reason


def test_rules_report_the_attributes_they_use() -> None:
    rules = one_rule("all: [{Modality: CT}, {not: {ImageType: LOCALIZER}}, {any: [{KVP: 120}]}]")
    assert rules.attributes == {"Modality", "ImageType", "KVP"}


def test_normalize_value() -> None:
    assert normalize_value("ORIGINAL\\PRIMARY\\ AXIAL ") == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert normalize_value(["A", None, 3, ""]) == ("A", "3")
    assert normalize_value("") == ()
    assert normalize_value(None) == ()
    assert normalize_value([{"CodeValue": "1"}]) == ()
    assert normalize_value(2.5) == ("2.5",)
