"""Rule sets: first-match vs all-match, ignore rules, triggers, the loop guard, the default file."""

from __future__ import annotations

from pathlib import Path

import pytest
from routing_helpers import rules_text

from ainode.jobs import Destination, DestinationKind, OutputKind
from ainode.routing import (
    GUARD_NODE_OUTPUT,
    GUARD_RESULT_MODALITY,
    NO_RULE_MATCHED,
    NODE_MANUFACTURER,
    KnownDestinations,
    MatchMode,
    Pool,
    Priority,
    Trigger,
    all_queue_names,
    destination_label,
    load_rules,
    parse_destination,
    parse_rules,
    queue_name,
)
from ainode.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[3]

RULES = """\
- name: skip-scouts
  action: ignore
  when: {ImageType: LOCALIZER}
- name: chest
  when: {Modality: CT, BodyPartExamined: CHEST}
  pipeline: lungs
  outputs: [SEG, SR]
  destinations: [orthanc, dicom:PACS]
  priority: high
  pool: gpu
  params: {fold: 0, labels: [1, 2]}
- name: any-ct
  when: {Modality: CT}
  pipeline: demo
- name: disabled
  enabled: false
  when: {Modality: CT}
  pipeline: demo
- name: per-study
  trigger: study
  when: {Modality: CT}
  pipeline: study-model
"""
CHEST = {"Modality": "CT", "BodyPartExamined": "CHEST", "ImageType": "ORIGINAL\\AXIAL"}


def test_first_match_stops_at_the_first_matching_rule() -> None:
    rule_set = parse_rules(rules_text(RULES, mode="first-match"))
    assert rule_set.mode == MatchMode.FIRST_MATCH
    decisions = rule_set.evaluate(CHEST)
    assert [(d.run, d.decided_by) for d in decisions] == [(True, "chest")]
    rule = decisions[0].rule
    assert rule is not None
    assert rule.pipeline == "lungs"
    assert rule.outputs == (OutputKind.SEG, OutputKind.SR)
    assert rule.destinations == (
        Destination(kind=DestinationKind.ORTHANC, name="local"),
        Destination(kind=DestinationKind.DICOM, name="PACS"),
    )
    assert rule.queue == "ainode.gpu.high"
    assert rule.job_params() == {"fold": 0, "labels": [1, 2]}


def test_all_match_makes_one_decision_per_matching_rule() -> None:
    rule_set = parse_rules(rules_text(RULES, mode="all-match"))
    decisions = rule_set.evaluate(CHEST)
    assert [d.decided_by for d in decisions] == ["chest", "any-ct"]  # not the disabled one
    assert all(d.run for d in decisions)


@pytest.mark.parametrize("mode", ["first-match", "all-match"])
def test_an_ignore_rule_decides_ignored(mode: str) -> None:
    scout = {**CHEST, "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}
    decisions = parse_rules(rules_text(RULES, mode=mode)).evaluate(scout)
    assert [(d.run, d.decided_by) for d in decisions] == [(False, "skip-scouts")]
    assert decisions[0].rule_name == "skip-scouts"


def test_no_match_is_an_ignored_decision_with_the_reasons() -> None:
    decisions = parse_rules(rules_text(RULES)).evaluate({"Modality": "MR"})
    assert len(decisions) == 1
    ignored = decisions[0]
    assert (ignored.run, ignored.decided_by, ignored.rule) == (False, NO_RULE_MATCHED, None)
    assert "chest: Modality is 'MR', which fails: equals 'CT'" in ignored.reason
    assert "disabled" not in ignored.reason  # disabled rules are not candidates


def test_triggers_select_the_rules() -> None:
    rule_set = parse_rules(rules_text(RULES, mode="all-match"))
    at_study = rule_set.evaluate(CHEST, trigger=Trigger.STUDY)
    assert [d.decided_by for d in at_study] == ["per-study"]
    assert at_study[0].trigger == Trigger.STUDY
    assert rule_set.evaluate({"Modality": "MR"}, trigger="study")[0].trigger == Trigger.STUDY


@pytest.mark.parametrize("modality", ["SEG", "RTSTRUCT", "SR", "RTPLAN", "KO", "PR"])
def test_loop_guard_ignores_results_before_any_rule(modality: str) -> None:
    catch_all = rules_text("- name: all\n  when: {Modality: {exists: true}}\n  pipeline: demo\n")
    decisions = parse_rules(catch_all, source="x").evaluate({"Modality": modality})
    assert [(d.run, d.decided_by) for d in decisions] == [(False, GUARD_RESULT_MODALITY)]
    assert modality in decisions[0].reason


def test_loop_guard_ignores_what_the_node_produced() -> None:
    catch_all = rules_text("- name: all\n  when: {Modality: CT}\n  pipeline: demo\n")
    ours = {"Modality": "CT", "Manufacturer": NODE_MANUFACTURER}
    decisions = parse_rules(catch_all).evaluate(ours)
    assert [(d.run, d.decided_by) for d in decisions] == [(False, GUARD_NODE_OUTPUT)]
    # A scanner whose name merely starts like ours is routed normally.
    phantom = {"Modality": "CT", "Manufacturer": "AINODE phantoms"}
    assert parse_rules(catch_all).evaluate(phantom)[0].run


def test_node_manufacturer_is_what_the_worker_writes() -> None:
    from ainode_worker.results.provenance import MANUFACTURER

    assert MANUFACTURER == NODE_MANUFACTURER


def test_explain_gives_every_rules_verdict() -> None:
    checks = parse_rules(rules_text(RULES)).explain(CHEST)
    by_name = {check.rule: check for check in checks}
    assert by_name["chest"].holds and by_name["chest"].why_not is None
    assert not by_name["skip-scouts"].holds
    assert not by_name["disabled"].enabled
    assert not by_name["per-study"].applies


def test_default_rules_file() -> None:
    settings = Settings()
    rule_set = load_rules(
        REPO_ROOT / "routing-rules.yaml",
        known_pipelines={"demo-phantom"},
        destinations=KnownDestinations.from_settings(settings),
    )
    assert rule_set.mode == MatchMode.FIRST_MATCH
    ct = {"Modality": "CT", "InstanceCount": "10"}
    decision = rule_set.evaluate(ct)[0]
    assert decision.run and decision.rule is not None
    assert decision.rule.pipeline == "demo-phantom"
    assert decision.rule.outputs == (OutputKind.SEG, OutputKind.RTSTRUCT)
    assert [destination_label(d) for d in decision.rule.destinations] == ["orthanc"]
    assert decision.rule.queue == "ainode.default"
    assert not rule_set.evaluate({"Modality": "CT", "InstanceCount": "9"})[0].run
    assert not rule_set.evaluate({"Modality": "MR", "InstanceCount": "200"})[0].run
    assert len(rule_set.sha256) == 64


def test_queue_names() -> None:
    assert queue_name() == "ainode.default"
    assert queue_name(Priority.HIGH) == "ainode.high"
    assert queue_name("low", "cpu") == "ainode.cpu.low"
    assert queue_name(Priority.NORMAL, Pool.GPU) == "ainode.gpu.default"
    assert all_queue_names("gpu") == ["ainode.gpu.high", "ainode.gpu.default", "ainode.gpu.low"]
    from ainode.broker import DEFAULT_QUEUE

    assert queue_name() == DEFAULT_QUEUE


def test_destinations_round_trip() -> None:
    for text in ["orthanc", "dicom:PACS", "dicomweb:archive"]:
        assert destination_label(parse_destination(text)) == text
    with pytest.raises(ValueError, match="not a destination"):
        parse_destination("dicom:")


def test_default_rules_name_a_model_of_the_bundled_registry() -> None:
    from ainode.registry import load_registry

    registry = load_registry(REPO_ROOT / "configs" / "models.yaml")
    rule_set = load_rules(REPO_ROOT / "routing-rules.yaml", known_pipelines=registry.ids())
    assert rule_set.pipelines <= set(registry.ids())
