"""Loaded rules and their evaluation: a series' facts in, a list of decisions out.

Before any rule is looked at, a built-in loop guard ignores series that are results (SEG,
RTSTRUCT, SR, RTPLAN, KO, PR and the other non-image modalities, by Modality and by SOP Class,
since a SEG relabelled CT is still a SEG) or that this node produced (``Manufacturer`` is
:data:`NODE_MANUFACTURER`), so a rule can never feed the node its own output. A series a rule
would run is then checked for what its tags already show to be unusable (pixel format,
spacing, orientation, size budget: :mod:`ainode.inputcheck`) and ignored with the reason, so
its job never waits for a worker to find out. Every outcome, including "ignored", is a
:class:`Decision` naming who decided and why, so the job store can record it and an engineer
can see why a series did or did not run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import JsonValue

from ainode.inputcheck import (
    VolumeBudget,
    orientation_problem,
    pixel_format_problem,
    sop_class_problem,
    spacing_problem,
)
from ainode.jobs import Destination, JobState, OutputKind
from ainode.queues import Pool, Priority, queue_name

from .attributes import AttributeValues, normalize_attributes
from .conditions import Condition
from .schema import Action, MatchMode, Trigger

# Modalities of objects that are not images to segment: results, plans, documents, states.
NON_IMAGE_MODALITIES: frozenset[str] = frozenset(
    {
        "SEG",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "SR",
        "KO",
        "PR",
        "REG",
        "FID",
        "DOC",
        "RWV",
        "PLAN",
        "AU",
        "ECG",
        "HD",
    }
)
# What the worker writes into every result's Manufacturer (ainode_worker.results.provenance).
NODE_MANUFACTURER = "AINODE"

GUARD_RESULT_MODALITY = "guard:result-modality"
GUARD_NODE_OUTPUT = "guard:node-output"
GUARD_NON_IMAGE_CLASS = "guard:non-image-class"
GUARD_INPUT = "guard:input"
NO_RULE_MATCHED = "no-rule-matched"
RULES_UNAVAILABLE = "rules-unavailable"
RULES_OVER_BUDGET = "rules-over-budget"
_MAX_REASON = 600


class HasAttributes(Protocol):
    """Anything carrying normalised attributes, e.g. the plugin's ``SeriesFacts``."""

    @property
    def attributes(self) -> Mapping[str, AttributeValues]: ...


FactsLike = HasAttributes | Mapping[str, object]


def facts_mapping(facts: FactsLike) -> Mapping[str, AttributeValues]:
    if isinstance(facts, Mapping):
        return normalize_attributes(facts)
    return facts.attributes


@dataclass(frozen=True)
class Notify:
    """Tell webhook ``webhook`` (a key of the ``webhooks`` setting) when a job enters ``events``."""

    webhook: str
    events: tuple[JobState, ...]


@dataclass(frozen=True)
class Rule:
    """One compiled rule: its condition is a tree of matchers, its regexes are compiled."""

    name: str
    condition: Condition
    action: Action = Action.RUN
    trigger: Trigger = Trigger.SERIES
    pipeline: str | None = None
    outputs: tuple[OutputKind, ...] = (OutputKind.SEG,)
    destinations: tuple[Destination, ...] = ()
    priority: Priority = Priority.NORMAL
    pool: Pool | None = None
    params: Mapping[str, JsonValue] = field(default_factory=dict, compare=False)
    notify: tuple[Notify, ...] = ()
    enabled: bool = True
    description: str | None = None
    line: int | None = None

    @property
    def queue(self) -> str:
        return queue_name(self.priority, self.pool)

    def job_params(self) -> dict[str, JsonValue]:
        """A private copy of ``params`` for one job (a job can never alter the rule)."""
        return copy.deepcopy(dict(self.params))


@dataclass(frozen=True)
class Decision:
    """What to do with one series: run ``rule`` (``run`` is True) or ignore it, and why."""

    run: bool
    decided_by: str  # a rule name, or one of the GUARD_* / NO_RULE_MATCHED / RULES_UNAVAILABLE
    reason: str
    rule: Rule | None = None
    trigger: Trigger = Trigger.SERIES

    @property
    def rule_name(self) -> str | None:
        return self.rule.name if self.rule is not None else None


@dataclass(frozen=True)
class RuleCheck:
    """One rule's verdict on one series, for a dry-run view: did it hold, and if not, why."""

    rule: str
    enabled: bool
    applies: bool  # the rule's trigger is the one asked about
    holds: bool
    why_not: str | None


def loop_guard(facts: Mapping[str, AttributeValues], trigger: Trigger) -> Decision | None:
    """The built-in decision for results and the node's own output, checked before any rule."""
    modality = next(iter(facts.get("Modality", ())), "")
    if modality.upper() in NON_IMAGE_MODALITIES:
        return Decision(
            run=False,
            decided_by=GUARD_RESULT_MODALITY,
            reason=f"Modality {modality} is not an image (a result, plan or document); "
            "such series are never routed",
            trigger=trigger,
        )
    sop_problem = sop_class_problem(next(iter(facts.get("SOPClassUID", ())), ""))
    if sop_problem is not None:
        return Decision(
            run=False, decided_by=GUARD_NON_IMAGE_CLASS, reason=sop_problem, trigger=trigger
        )
    if NODE_MANUFACTURER in facts.get("Manufacturer", ()):
        return Decision(
            run=False,
            decided_by=GUARD_NODE_OUTPUT,
            reason=f"produced by this node (Manufacturer {NODE_MANUFACTURER}); never routed again",
            trigger=trigger,
        )
    return None


def _first(facts: Mapping[str, AttributeValues], keyword: str) -> str | None:
    return next(iter(facts.get(keyword, ())), None)


def input_problem(
    facts: Mapping[str, AttributeValues], budget: VolumeBudget | None = None
) -> str | None:
    """Why the tags of a series (one instance's, and its instance count) already show that no
    model can run on it; None when they do not (the worker checks the files again)."""
    bits = _first(facts, "BitsAllocated")
    if bits is not None:
        modality = _first(facts, "Modality") or ""
        problem = pixel_format_problem(modality, bits, _first(facts, "SamplesPerPixel") or 1)
        if problem:
            return problem
    if "PixelSpacing" in facts:
        problem = spacing_problem(facts["PixelSpacing"])
        if problem:
            return problem
    if "ImageOrientationPatient" in facts:
        problem = orientation_problem(facts["ImageOrientationPatient"])
        if problem:
            return problem
    try:
        rows, columns = int(_first(facts, "Rows") or -1), int(_first(facts, "Columns") or -1)
        frames = int(_first(facts, "NumberOfFrames") or 1)
        count = int(_first(facts, "InstanceCount") or 1)
    except ValueError:
        return "Rows, Columns or NumberOfFrames is not a number"
    if rows == 0 or columns == 0:
        return f"the images have {rows} Rows and {columns} Columns: no pixels"
    if budget is not None and rows > 0 and columns > 0:
        return budget.problem((max(count, 1) * max(frames, 1), rows, columns), None)
    return None


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, in order, with the file's matching mode."""

    mode: MatchMode
    rules: tuple[Rule, ...]
    source: str = "<rules>"
    sha256: str = ""
    unavailable: str | None = None  # set when no valid rules could be loaded: ignore all

    @classmethod
    def unavailable_rules(cls, reason: str, source: str = "<rules>") -> RuleSet:
        """Rules that ignore every series with ``reason`` (used before any good file loaded)."""
        return cls(mode=MatchMode.FIRST_MATCH, rules=(), source=source, unavailable=reason)

    def get(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)

    @property
    def attributes(self) -> frozenset[str]:
        """Every attribute some rule tests: what the facts must carry."""
        return frozenset().union(*(rule.condition.attributes() for rule in self.rules))

    @property
    def pipelines(self) -> frozenset[str]:
        return frozenset(rule.pipeline for rule in self.rules if rule.pipeline)

    def evaluate(
        self,
        facts: FactsLike,
        *,
        trigger: Trigger | str = Trigger.SERIES,
        budget: VolumeBudget | None = None,
    ) -> list[Decision]:
        """The decisions for one series: one ``ignored`` decision, or one per job to make.

        ``budget`` also refuses a series whose tags declare more voxels than a job may have.
        """
        level = Trigger(trigger)
        values = facts_mapping(facts)
        if self.unavailable is not None:
            return [Decision(False, RULES_UNAVAILABLE, self.unavailable, trigger=level)]
        guarded = loop_guard(values, level)
        if guarded is not None:
            return [guarded]
        candidates = [rule for rule in self.rules if rule.enabled and rule.trigger == level]
        matched: list[Rule] = []
        for rule in candidates:
            if rule.condition.holds(values):
                matched.append(rule)
                if self.mode == MatchMode.FIRST_MATCH:
                    break
        vetoes = [rule for rule in matched if rule.action == Action.IGNORE]
        if vetoes:
            veto = vetoes[0]
            return [
                Decision(False, veto.name, f"ignored by rule {veto.name!r}", veto, trigger=level)
            ]
        problem = input_problem(values, budget) if matched else None
        if problem is not None:
            return [Decision(False, GUARD_INPUT, problem, trigger=level)]
        if matched:
            return [
                Decision(True, rule.name, f"matched rule {rule.name!r}", rule, trigger=level)
                for rule in matched
            ]
        reason = self._no_match_reason(candidates, values, level)
        return [Decision(False, NO_RULE_MATCHED, reason, trigger=level)]

    def explain(
        self, facts: FactsLike, *, trigger: Trigger | str = Trigger.SERIES
    ) -> list[RuleCheck]:
        """Every rule's verdict on ``facts``, whatever the mode (for a dry-run REST route)."""
        level = Trigger(trigger)
        values = facts_mapping(facts)
        checks = []
        for rule in self.rules:
            why_not = rule.condition.why_not(values)
            checks.append(
                RuleCheck(rule.name, rule.enabled, rule.trigger == level, why_not is None, why_not)
            )
        return checks

    def _no_match_reason(
        self, candidates: list[Rule], values: Mapping[str, AttributeValues], level: Trigger
    ) -> str:
        if not candidates:
            return f"no enabled rule is triggered per {level.value}"
        reasons = [f"{rule.name}: {rule.condition.why_not(values)}" for rule in candidates]
        text = "no rule matched (" + "; ".join(reasons) + ")"
        return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 4] + "...)"
