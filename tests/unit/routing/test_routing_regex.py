"""Rule regular expressions run in linear time (RE2); what RE2 lacks is refused at load, and
attribute values are capped at their VR's maximum length before any rule sees them."""

from __future__ import annotations

import pytest
from routing_helpers import holds, marked_line, rules_text

from ainode.routing import RulesError, cap_values, normalize_attributes, parse_rules
from ainode.routing.attributes import DEFAULT_MAX_CHARS, MAX_VALUES, max_value_chars


def test_catastrophic_backtracking_pattern_decides_on_a_long_value() -> None:
    """``(a+)+$`` against 63 "a" and a "!": hours with a backtracking engine; RE2 answers."""
    facts = {"Modality": "CT", "SeriesDescription": "a" * 63 + "!"}
    assert not holds('SeriesDescription: {matches: "(a+)+$"}', facts)
    assert holds('SeriesDescription: {matches: "(a+)+!$"}', facts)


def test_ignore_case_and_unicode_still_work() -> None:
    assert holds(
        'SeriesDescription: {matches: "THORAX", ignore_case: true}',
        {"SeriesDescription": "ct thorax"},
    )
    assert holds('SeriesDescription: {matches: "^Thé"}', {"SeriesDescription": "Thérapie"})


@pytest.mark.parametrize(
    ("pattern", "named"),
    [
        (r"(abd)\\1", "backreferences"),
        ("(?=abd)a", "lookahead"),
        ("(?!abd)a", "lookahead"),
        ("(?<=x)abd", "lookbehind"),
        ("(?<!x)abd", "lookbehind"),
        ("a{5000}", "repetition"),
    ],
)
def test_constructs_re2_lacks_are_refused_at_load_with_line_and_field(
    pattern: str, named: str
) -> None:
    text = rules_text(
        f"""\
        - name: ct
          when:
            Modality: CT
            SeriesDescription: {{matches: "{pattern}"}}  # <-
          pipeline: demo
        """
    )
    with pytest.raises(RulesError) as info:
        parse_rules(text, source="rules.yaml")
    error = info.value
    assert (error.line, error.field) == (
        marked_line(text),
        "rules[0].when.SeriesDescription.matches",
    )
    assert "invalid regular expression" in error.message and named in error.message


def test_values_are_capped_at_their_vr_length() -> None:
    assert max_value_chars("SeriesDescription") == 64  # LO
    assert max_value_chars("Modality") == 16  # CS
    assert max_value_chars("ImageComments") == 10240  # LT
    assert max_value_chars("NoSuchKeyword") == DEFAULT_MAX_CHARS
    assert cap_values("SeriesDescription", ("x" * 10_000,)) == ("x" * 64,)
    assert len(cap_values("ImageType", tuple("ABC") * 100)) == MAX_VALUES
    facts = normalize_attributes({"SeriesDescription": "a" * 5000 + "TAIL"})
    assert facts["SeriesDescription"] == ("a" * 64,)
    # a rule cannot see past the cap: what a valid value could not hold is not there
    assert not holds(
        'SeriesDescription: {matches: "TAIL"}', {"SeriesDescription": "a" * 5000 + "TAIL"}
    )
