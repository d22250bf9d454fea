"""Rule evaluation runs on its own thread with a time budget: a caller never waits past it."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from ainode_plugin.facts import SeriesFacts
from ainode_plugin.routing_service import RuleRunner
from routing_helpers import one_rule

from ainode.routing import RULES_OVER_BUDGET, AttributeValues, Trigger


class StallingAttributes(Mapping[str, AttributeValues]):
    """Attributes whose every read waits for ``release``: an evaluation that cannot finish."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def __getitem__(self, key: str) -> AttributeValues:
        self.release.wait(120)
        return ("CT",) if key == "Modality" else ()

    def __iter__(self) -> Iterator[str]:
        self.release.wait(120)
        return iter(("Modality",))

    def __len__(self) -> int:
        return 1


def _facts(attributes: Mapping[str, AttributeValues]) -> SeriesFacts:
    return SeriesFacts("s", "t", "1.2.3", "1.2", 1, "f", attributes)


def test_an_evaluation_over_budget_ignores_the_series_with_the_reason() -> None:
    rules = one_rule("Modality: CT")
    release = threading.Event()
    try:
        decisions = RuleRunner(budget_s=0.2).evaluate(
            rules, _facts(StallingAttributes(release)), Trigger.SERIES
        )
    finally:
        release.set()
    assert [(d.run, d.decided_by) for d in decisions] == [(False, RULES_OVER_BUDGET)]
    assert "rules_budget_s" in decisions[0].reason


def test_an_evaluation_within_budget_answers_its_decisions() -> None:
    decisions = RuleRunner(budget_s=60).evaluate(
        one_rule("Modality: CT"), _facts({"Modality": ("CT",)}), Trigger.SERIES
    )
    assert [(d.run, d.decided_by) for d in decisions] == [(True, "r")]
