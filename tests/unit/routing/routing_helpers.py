"""Helpers for the routing tests: rules written as text, with the line under test marked."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

from ainode.routing import KnownDestinations, RuleSet, parse_rules

MARK = "# <-"


def marked_line(text: str, mark: str = MARK) -> int:
    """The 1-based number of the one line of ``text`` that carries ``mark``."""
    lines = [number for number, line in enumerate(text.splitlines(), 1) if mark in line]
    assert len(lines) == 1, f"expected one line marked {mark!r}"
    return lines[0]


def rules_text(body: str, *, mode: str = "first-match") -> str:
    """A complete rules file around the YAML of the ``rules:`` list."""
    return f"version: 1\nmode: {mode}\nrules:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def one_rule(when: str) -> RuleSet:
    """A rule set with a single rule whose ``when:`` is ``when`` (YAML, flow or block)."""
    block = textwrap.indent(textwrap.dedent(when).strip(), "      ")
    text = rules_text(f"- name: r\n  pipeline: p\n  when:\n{block}\n")
    return parse_rules(text, known_pipelines={"p"})


def holds(when: str, facts: Mapping[str, object]) -> bool:
    """Does a rule with this ``when:`` condition match these facts?"""
    return one_rule(when).evaluate(facts)[0].run


DESTINATIONS = KnownDestinations(
    dicom=frozenset({"PACS"}), dicomweb=frozenset({"archive"}), webhooks=frozenset({"ris"})
)
