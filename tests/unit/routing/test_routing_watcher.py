"""The watcher reloads changed rules and keeps the last good ones when an edit is broken."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from routing_helpers import DESTINATIONS, rules_text

from ainode.routing import RULES_UNAVAILABLE, RulesError, RulesWatcher

CT_RULE = "- name: ct\n  when: {Modality: CT}\n  pipeline: demo\n"
MR_RULE = "- name: mr\n  when: {Modality: MR}\n  pipeline: demo\n"
BROKEN = "- name: mr\n  when: {Modality: MR}\n  pipeline: demo\n  priority: urgent\n"


def write(path: Path, text: str, tick: int) -> None:
    """Write and give the file a distinct mtime, as a later save in real time would have."""
    path.write_text(text)
    os.utime(path, ns=(tick * 1_000_000_000, tick * 1_000_000_000))


def decided_by(watcher: RulesWatcher, modality: str) -> str:
    return watcher.rules.evaluate({"Modality": modality})[0].decided_by


def test_reloads_changed_rules(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(CT_RULE), 1)
    watcher = RulesWatcher(path, known_pipelines={"demo"})
    assert decided_by(watcher, "CT") == "ct"
    assert not watcher.check()  # unchanged

    write(path, rules_text(MR_RULE), 2)
    assert watcher.check()
    assert decided_by(watcher, "MR") == "mr"
    assert decided_by(watcher, "CT") == "no-rule-matched"
    status = watcher.status()
    assert status.loaded and status.error is None and status.rule_count == 1


def test_broken_edit_keeps_last_good_rules_and_records_the_error(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(CT_RULE), 1)
    watcher = RulesWatcher(path, known_pipelines={"demo"})
    good_sha = watcher.rules.sha256

    write(path, rules_text(BROKEN), 2)
    assert not watcher.check()
    assert decided_by(watcher, "CT") == "ct"  # still the old rules
    error = watcher.error
    assert error is not None
    assert (error.line, error.field) == (7, "rules[0].priority")
    status = watcher.status().as_dict()
    assert status["sha256"] == good_sha
    assert status["error"]["problems"][0]["line"] == 7  # type: ignore[index]

    write(path, rules_text(MR_RULE), 3)
    assert watcher.check()
    assert watcher.error is None
    assert decided_by(watcher, "MR") == "mr"


def test_unknown_pipeline_after_edit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(CT_RULE), 1)
    watcher = RulesWatcher(path, known_pipelines={"demo"})
    write(path, rules_text(CT_RULE.replace("demo", "missing-model")), 2)
    assert not watcher.check()
    assert watcher.error is not None and "missing-model" in str(watcher.error)
    assert watcher.rules.get("ct") is not None


def test_same_content_saved_again_is_not_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(CT_RULE), 1)
    watcher = RulesWatcher(path)
    loaded_at = watcher.status().loaded_at
    write(path, rules_text(CT_RULE), 2)
    assert not watcher.check()
    assert watcher.status().loaded_at == loaded_at


def test_no_valid_rules_yet_ignores_everything_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(BROKEN), 1)
    watcher = RulesWatcher(path)
    decision = watcher.rules.evaluate({"Modality": "MR"})[0]
    assert (decision.run, decision.decided_by) == (False, RULES_UNAVAILABLE)
    assert "rules[0].priority" in decision.reason
    assert not watcher.status().loaded

    write(path, rules_text(MR_RULE), 2)
    assert watcher.check()
    assert decided_by(watcher, "MR") == "mr"


def test_deleted_file_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(CT_RULE), 1)
    watcher = RulesWatcher(path)
    path.unlink()
    assert not watcher.check()
    assert watcher.error is not None and "does not exist" in str(watcher.error)
    assert decided_by(watcher, "CT") == "ct"
    write(path, rules_text(CT_RULE), 2)  # restored as it was
    assert not watcher.check()  # same rules: nothing new to load ...
    assert watcher.error is None  # ... and the file matches the rules in force again


def test_validate_checks_text_with_the_nodes_knowledge_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "routing-rules.yaml"
    write(path, rules_text(CT_RULE), 1)
    watcher = RulesWatcher(path, known_pipelines={"demo"}, destinations=DESTINATIONS)
    before = watcher.status()
    checked = watcher.validate(rules_text(MR_RULE + "  notify: [ris]\n"))
    assert [rule.name for rule in checked.rules] == ["mr"]
    with pytest.raises(RulesError) as refused:
        watcher.validate(rules_text(MR_RULE.replace("demo", "other") + "  notify: [pager]\n"))
    assert [(p.line, p.field) for p in refused.value.problems] == [
        (6, "rules[0].pipeline"),
        (7, "rules[0].notify[0].webhook"),
    ]
    assert str(refused.value).startswith("<request body>: 2 problems")
    assert watcher.status() == before and watcher.error is None
    assert decided_by(watcher, "CT") == "ct" and decided_by(watcher, "MR") == "no-rule-matched"
