"""Malformed rules files: each problem is reported with the right line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from routing_helpers import DESTINATIONS, marked_line, rules_text

from ainode.routing import RulesError, load_rules, parse_rules
from ainode.routing.conditions import MAX_DEPTH
from ainode.yamlmarks import MAX_NODES


def error_of(text: str, **kwargs: object) -> RulesError:
    with pytest.raises(RulesError) as info:
        parse_rules(text, source="rules.yaml", **kwargs)  # type: ignore[arg-type]
    return info.value


def test_bad_yaml_syntax_names_the_line() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo: extra  # <-
        """
    )
    error = error_of(text)
    assert error.line == marked_line(text)
    assert "not valid YAML" in error.message
    assert str(error).startswith("rules.yaml, line ")


def test_unclosed_flow_mapping_is_a_yaml_error() -> None:
    error = error_of(rules_text("- name: ct\n  when: {Modality: CT\n"))
    assert "not valid YAML" in error.message
    assert error.line is not None


def test_unknown_rule_field_points_at_its_key() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipelin: demo  # <-
        """
    )
    error = error_of(text)
    unknown = [p for p in error.problems if "unknown field" in p.message]
    assert len(unknown) == 1
    assert unknown[0].line == marked_line(text)
    assert unknown[0].field == "rules[0].pipelin"
    assert "pipeline" in unknown[0].message  # the allowed fields are listed
    assert unknown[0].rule == "ct"


def test_unknown_top_level_field() -> None:
    text = "version: 1\nmode: first-match\nmodes: all-match  # <-\nrules: []\n"
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "modes")


def test_wrong_type_names_field_and_value() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
          outputs: SEG  # <-
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].outputs")
    assert "list" in error.message and "'SEG'" in error.message


def test_unknown_output_kind_names_the_list_item() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
          outputs:
            - SEG
            - STL  # <-
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].outputs[1]")
    assert "RTSTRUCT" in error.message  # the allowed values are named


def test_unknown_operator() -> None:
    text = rules_text(
        """\
        - name: ct
          when:
            all:
              - Modality: CT
              - SliceThickness: {below: 3}  # <-
          pipeline: demo
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (
        marked_line(text),
        "rules[0].when.all[1].SliceThickness.below",
    )
    assert "unknown operator 'below'" in error.message
    assert "le" in error.message


def test_operator_of_wrong_type() -> None:
    text = rules_text(
        """\
        - name: ct
          when:
            SliceThickness: {ge: thin}  # <-
          pipeline: demo
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].when.SliceThickness.ge")
    assert "number" in error.message


def test_bad_regex() -> None:
    text = rules_text(
        """\
        - name: ct
          when:
            Modality: CT
            SeriesDescription:
              matches: "abdo(men"  # <-
          pipeline: demo
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (
        marked_line(text),
        "rules[0].when.SeriesDescription.matches",
    )
    assert "regular expression" in error.message


def test_missing_mode_explains_both_choices() -> None:
    text = "# comment\nversion: 1  # <-\nrules: []\n"
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "mode")
    assert "first-match" in error.message and "all-match" in error.message


def test_wrong_mode_value() -> None:
    text = "version: 1\nmode: best-match  # <-\nrules: []\n"
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "mode")
    assert "'best-match'" in error.message


def test_unsupported_version() -> None:
    text = "version: 2  # <-\nmode: first-match\nrules: []\n"
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "version")


def test_duplicate_rule_names() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
        - name: ct  # <-
          when: {Modality: MR}
          pipeline: demo
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[1].name")
    assert "used twice" in error.message
    assert "line 4" in error.message  # where the first one is


def test_unknown_pipeline_names_the_rule() -> None:
    text = rules_text(
        """\
        - name: chest
          when: {Modality: CT}
          pipeline: lung-lobes  # <-
        """
    )
    error = error_of(text, known_pipelines={"demo-phantom"})
    assert (error.line, error.field) == (marked_line(text), "rules[0].pipeline")
    assert "'lung-lobes'" in error.message and "demo-phantom" in error.message
    assert "rule 'chest'" in str(error)


def test_pipelines_are_not_checked_without_a_registry() -> None:
    rules = parse_rules(rules_text("- name: chest\n  when: {Modality: CT}\n  pipeline: any\n"))
    assert rules.pipelines == {"any"}


def test_unknown_destination_names() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
          destinations:
            - orthanc
            - dicom:PACS
            - dicom:OTHER_PACS  # <-
        """
    )
    error = error_of(text, destinations=DESTINATIONS)
    assert (error.line, error.field) == (marked_line(text), "rules[0].destinations[2]")
    assert "'OTHER_PACS'" in error.message and "PACS" in error.message


def test_malformed_destination() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
          destinations: [orthanc, "ftp:server"]  # <-
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].destinations[1]")
    assert "dicomweb:" in error.message


@pytest.mark.parametrize(
    ("notify", "field", "words"),
    [
        ("notify: [other]", "rules[0].notify[0].webhook", "no webhook named 'other'"),
        ("notify: [other]", "rules[0].notify[0].webhook", "(webhooks: ris)"),
        ("notify: ris", "rules[0].notify", "valid list"),
        ("notify: [5]", "rules[0].notify[0]", "a webhook name from the node's settings"),
        ("notify: [{events: [done]}]", "rules[0].notify[0].webhook", "required field 'webhook'"),
        (
            "notify: [{webhook: ris, event: [done]}]",
            "rules[0].notify[0].event",
            "unknown field 'event'; allowed: webhook, events",
        ),
        (
            "notify: [{webhook: ris, events: [finished]}]",
            "rules[0].notify[0].events[0]",
            "'queued', 'running', 'done', 'failed' or 'cancelled' (got 'finished')",
        ),
        ("notify: [{webhook: ris, events: []}]", "rules[0].notify[0].events", "at least 1"),
        (
            "notify: [{webhook: ris, events: [done, done]}]",
            "rules[0].notify[0].events[1]",
            "event done is listed twice",
        ),
        ("notify: [ris, {webhook: ris}]", "rules[0].notify[1].webhook", "listed twice"),
        ("notify: [{webhook: ris, secret: abc}]", "rules[0].notify[0].secret", "unknown field"),
    ],
)
def test_notify_mistakes(notify: str, field: str, words: str) -> None:
    text = rules_text(
        f"""\
        - name: ct
          when: {{Modality: CT}}
          pipeline: demo
          {notify}  # <-
        """
    )
    error = error_of(text, destinations=DESTINATIONS)
    assert (error.line, error.field) == (marked_line(text), field)
    assert words in error.message
    assert error.problems[0].rule == "ct"


def test_an_ignore_rule_cannot_notify() -> None:
    text = rules_text(
        """\
        - name: skip
          action: ignore
          when: {Modality: SC}
          notify: [ris]  # <-
        """
    )
    error = error_of(text, destinations=DESTINATIONS)
    assert (error.line, error.field) == (marked_line(text), "rules[0].notify")
    assert "remove `notify:`" in error.message


def test_notify_names_webhooks_and_events() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
          notify:
            - ris
        - name: mr
          when: {Modality: MR}
          pipeline: demo
          notify: [{webhook: ris, events: [failed, done]}]
        """
    )
    ct, mr = parse_rules(text, destinations=DESTINATIONS).rules
    assert [(n.webhook, [e.value for e in n.events]) for n in ct.notify] == [
        ("ris", ["queued", "running", "done", "failed", "cancelled"])
    ]
    assert [(n.webhook, [e.value for e in n.events]) for n in mr.notify] == [
        ("ris", ["failed", "done"])
    ]
    # Without the node's settings (e.g. a CLI check of the file alone) names are not checked.
    unchecked = parse_rules(text.replace("- ris", "- elsewhere")).rules[0]
    assert unchecked.notify[0].webhook == "elsewhere"


def test_unknown_attribute_keyword_suggests_the_right_one() -> None:
    text = rules_text(
        """\
        - name: ct
          when:
            SliceThicknes: {le: 3}  # <-
          pipeline: demo
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].when.SliceThicknes")
    assert "SliceThickness" in error.message


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate"])
def test_identifying_attributes_are_refused(keyword: str) -> None:
    text = rules_text(
        f"""\
        - name: ct
          when:
            {keyword}: {{exists: true}}  # <-
          pipeline: demo
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), f"rules[0].when.{keyword}")
    assert "privacy" in error.message


def test_duplicate_key_in_a_mapping() -> None:
    text = rules_text(
        """\
        - name: ct
          when: {Modality: CT}
          pipeline: demo
          pipeline: other  # <-
        """
    )
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].pipeline")
    assert "twice" in error.message


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ("ImageType: [ORIGINAL, AXIAL]", "{in: [...]}"),
        ("BodyPartExamined: ON", "quote"),
        ("Modality:", "no value"),
        ("Modality: {ignore_case: true}", "no operator"),
        ("SliceThickness: {ignore_case: true, ge: 1}", "ignore_case applies only"),
        ("Modality: {in: []}", "at least 1"),
        ("any: []", "non-empty list"),
        ("not: CT", "non-empty mapping"),
    ],
)
def test_condition_mistakes(condition: str, words: str) -> None:
    text = rules_text(
        f"""\
        - name: ct
          when:
            {condition}  # <-
          pipeline: demo
        """
    )
    error = error_of(text)
    assert error.line == marked_line(text)
    assert words in error.message
    assert error.field.startswith("rules[0].when")


def test_run_rule_needs_a_pipeline_and_ignore_rule_refuses_one() -> None:
    text = rules_text(
        """\
        - name: ct  # <-
          when: {Modality: CT}
        - name: skip
          action: ignore
          when: {Modality: SC}
          pipeline: demo
        """
    )
    error = error_of(text)
    assert [(p.line, p.field) for p in error.problems] == [
        (marked_line(text), "rules[0].pipeline"),
        (marked_line(text) + 5, "rules[1].pipeline"),
    ]


def test_all_problems_are_reported_at_once() -> None:
    text = rules_text(
        """\
        - name: a
          when: {Modalty: CT}  # <-1
          pipeline: demo
        - name: b
          when: {SeriesDescription: {matches: "("}}  # <-2
          pipeline: nope  # <-3
        """
    )
    error = error_of(text, known_pipelines={"demo"})
    assert [p.line for p in error.problems] == [
        marked_line(text, "# <-1"),
        marked_line(text, "# <-2"),
        marked_line(text, "# <-3"),
    ]
    assert "3 problems" in str(error)
    assert error.as_dict()["problems"][2]["rule"] == "b"  # type: ignore[index]


def test_conditions_nested_too_deep() -> None:
    condition = "Modality: CT"
    for _ in range(MAX_DEPTH + 2):
        condition = f"not: {{{condition}}}"
    error = error_of(rules_text(f"- name: deep\n  pipeline: demo\n  when: {{{condition}}}\n"))
    assert "nested more than" in error.message


def test_recursive_alias_is_refused() -> None:
    error = error_of("version: 1\nmode: first-match\nrules: &loop [*loop]\n")
    assert "refers to itself" in error.message


def test_exponential_aliases_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    error = error_of("\n".join(lines) + "\n")
    assert str(MAX_NODES) in error.message


@pytest.mark.parametrize(
    "value", ["!!int twelve", "!!float abc", "!!bool maybe", "!!python/object:os.system x"]
)
def test_bad_explicit_tags_are_rules_errors(value: str) -> None:
    text = f"version: 1\nmode: first-match\nrules: []\nextra: {value}  # <-\n"
    error = error_of(text)
    assert error.line == marked_line(text)


def test_not_a_mapping_and_empty_file() -> None:
    assert "mapping" in error_of("- a\n- b\n").message
    assert "empty" in error_of("# only a comment\n").message


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as missing:
        load_rules(tmp_path / "absent.yaml")
    assert missing.value.path == tmp_path / "absent.yaml"
    assert "does not exist" in str(missing.value)

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"version: 1\nmode: first-match\n# R\xe9sum\xe9\nrules: []\n")
    with pytest.raises(RulesError) as encoding:
        load_rules(latin1)
    assert encoding.value.line == 3
    assert "UTF-8" in encoding.value.message


def test_error_line_points_into_the_real_file(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    text = rules_text(
        "- name: ct\n  when: {Modality: CT}\n  pipeline: demo\n  priority: urgent  # <-\n"
    )
    path.write_text(text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.path == path
    assert info.value.line == marked_line(text)
    assert str(info.value) == (
        f"{path}, line {marked_line(text)}, rules[0].priority (rule 'ct'): "
        "Input should be 'high', 'normal' or 'low' (got 'urgent')"
    )


def test_yaml_yes_no_words_get_a_hint() -> None:
    text = rules_text("- name: off  # <-\n  when: {Modality: CT}\n  pipeline: demo\n")
    error = error_of(text)
    assert (error.line, error.field) == (marked_line(text), "rules[0].name")
    assert "quotes" in error.message
