"""Reading ``routing-rules.yaml``: YAML with line marks, schema check, then compiled rules.

Everything that can be wrong in the file is found here, at load, with its line: syntax, unknown
fields or operators, wrong types, bad regular expressions, unknown attribute keywords, duplicate
rule names, pipelines the model registry does not know, and destinations or webhooks the
settings do not name. Evaluation later can then never fail on the file's account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ainode.jobs import Destination, JobState
from ainode.yamlmarks import (
    MAX_FILE_BYTES,
    MarkedDocument,
    YamlDocumentError,
    decode_document,
    load_marked,
)

from .conditions import parse_condition
from .destinations import KnownDestinations, parse_destination, unknown_destination
from .errors import Location, Problem, RulesError, format_field
from .rules import Notify, Rule, RuleSet
from .schema import Action, RuleModel, RulesFileModel, validation_problems


def load_rules(
    path: Path | str,
    *,
    known_pipelines: Iterable[str] | None = None,
    destinations: KnownDestinations | None = None,
) -> RuleSet:
    """Load and validate a rules file; raises :class:`RulesError` naming file, line and field.

    ``known_pipelines`` (model and cascade ids of the registry) and ``destinations`` (peer
    names from settings) are optional so the file can be checked on its own, e.g. by a CLI.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise RulesError(path, [Problem(None, "", "the rules file does not exist")]) from error
    except OSError as error:
        reason = error.strerror or str(error)
        raise RulesError(
            path, [Problem(None, "", f"cannot read the rules file: {reason}")]
        ) from error
    return parse_rules(raw, source=path, known_pipelines=known_pipelines, destinations=destinations)


def parse_rules(
    content: str | bytes,
    *,
    source: Path | str = "<rules>",
    known_pipelines: Iterable[str] | None = None,
    destinations: KnownDestinations | None = None,
) -> RuleSet:
    """Validate rules given as text (see :func:`load_rules`)."""
    raw = content.encode("utf-8") if isinstance(content, str) else content
    try:
        doc = load_marked(decode_document(raw, MAX_FILE_BYTES), "a rules file")
    except YamlDocumentError as error:
        raise RulesError(
            source, [Problem(p.line, format_field(p.location), p.message) for p in error.problems]
        ) from error
    if doc.data is None:
        raise RulesError(
            source, [Problem(None, "", "the file is empty; it needs version, mode and rules")]
        )
    if not isinstance(doc.data, dict):
        raise RulesError(
            source,
            [
                Problem(
                    doc.line_of(()),
                    "",
                    "the file must be a mapping with version, mode and rules at the top level",
                )
            ],
        )
    try:
        model = RulesFileModel.model_validate(doc.data)
    except ValidationError as error:
        problems = [
            _problem(doc, location, message)
            for location, message in validation_problems(error, RulesFileModel)
        ]
        raise RulesError(source, problems) from error
    pipelines = frozenset(known_pipelines) if known_pipelines is not None else None
    problems = []
    rules = tuple(
        _compile(doc, index, rule, pipelines, destinations, problems)
        for index, rule in enumerate(model.rules)
    )
    first_line: dict[str, int | None] = {}
    for index, rule in enumerate(rules):
        if rule.name in first_line:
            problems.append(
                _problem(
                    doc,
                    ("rules", index, "name"),
                    f"rule name {rule.name!r} is used twice (first on line "
                    f"{first_line[rule.name]}); names must be unique",
                )
            )
        else:
            first_line[rule.name] = doc.line_of(("rules", index, "name"))
    if problems:
        raise RulesError(source, problems)
    return RuleSet(
        mode=model.mode,
        rules=rules,
        source=str(source),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _compile(
    doc: MarkedDocument,
    index: int,
    model: RuleModel,
    pipelines: frozenset[str] | None,
    known: KnownDestinations | None,
    problems: list[Problem],
) -> Rule:
    base: Location = ("rules", index)

    def report(location: Location, message: str) -> None:
        problems.append(_problem(doc, location, message, model.name))

    condition = parse_condition(model.when, (*base, "when"), report)
    if model.action == Action.RUN:
        if model.pipeline is None:
            report(
                (*base, "pipeline"), "a rule that runs needs `pipeline:` (a model or cascade id)"
            )
        elif pipelines is not None and model.pipeline not in pipelines:
            names = ", ".join(sorted(pipelines)) or "none registered"
            report(
                (*base, "pipeline"),
                f"unknown pipeline {model.pipeline!r}; the model registry knows: {names}",
            )
    elif model.pipeline is not None:
        report((*base, "pipeline"), "an `action: ignore` rule runs nothing; remove `pipeline:`")
    for position, kind in enumerate(model.outputs):
        if kind in model.outputs[:position]:
            report((*base, "outputs", position), f"output {kind.value} is listed twice")
    destinations: list[Destination] = []
    for position, text in enumerate(model.destinations):
        where: Location = (*base, "destinations", position)
        try:
            destination = parse_destination(text)
        except ValueError as error:
            report(where, str(error))
            continue
        problem = unknown_destination(destination, known) if known is not None else None
        if problem:
            report(where, problem)
        elif destination in destinations:
            report(where, f"destination {text!r} is listed twice")
        else:
            destinations.append(destination)
    notify = _compile_notify(model, base, known, report)
    return Rule(
        name=model.name,
        condition=condition,
        action=model.action,
        trigger=model.trigger,
        pipeline=model.pipeline,
        outputs=tuple(model.outputs),
        destinations=tuple(destinations),
        priority=model.priority,
        pool=model.pool,
        params=dict(model.params),
        notify=notify,
        enabled=model.enabled,
        description=model.description,
        line=doc.line_of(base),
    )


def _compile_notify(
    model: RuleModel,
    base: Location,
    known: KnownDestinations | None,
    report: Callable[[Location, str], None],
) -> tuple[Notify, ...]:
    if model.notify and model.action == Action.IGNORE:
        report((*base, "notify"), "an `action: ignore` rule makes no job; remove `notify:`")
        return ()
    targets: list[Notify] = []
    for position, item in enumerate(model.notify):
        where: Location = (*base, "notify", position)
        if known is not None and item.webhook not in known.webhooks:
            names = ", ".join(sorted(known.webhooks)) or "none configured"
            report(
                (*where, "webhook"),
                f"no webhook named {item.webhook!r} in the node's settings (webhooks: {names})",
            )
            continue
        if any(target.webhook == item.webhook for target in targets):
            report((*where, "webhook"), f"webhook {item.webhook!r} is listed twice")
            continue
        for index, event in enumerate(item.events):
            if event in item.events[:index]:
                report((*where, "events", index), f"event {event.value} is listed twice")
        events = tuple(JobState(event.value) for event in dict.fromkeys(item.events))
        targets.append(Notify(webhook=item.webhook, events=events))
    return tuple(targets)


def _problem(
    doc: MarkedDocument, location: Location, message: str, rule: str | None = None
) -> Problem:
    return Problem(
        doc.line_of(location),
        format_field(location),
        message,
        rule if rule is not None else _rule_name(doc.data, location),
    )


def _rule_name(data: Any, location: Location) -> str | None:
    if len(location) < 2 or location[0] != "rules" or not isinstance(location[1], int):
        return None
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list) or not 0 <= location[1] < len(rules):
        return None
    rule = rules[location[1]]
    name = rule.get("name") if isinstance(rule, dict) else None
    return name if isinstance(name, str) and len(name) <= 64 else None
