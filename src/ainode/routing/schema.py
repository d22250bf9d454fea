"""The pydantic schema of ``routing-rules.yaml`` and the translation of its errors into plain words.

The file's shape (version, mode, rules and their fields, the operators of an attribute test)
is checked here. Conditions under ``when:`` have keys chosen by the author (attribute keywords),
so :mod:`ainode.routing.conditions` walks them itself and uses :class:`Operators` for each test.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ainode.jobs import OutputKind
from ainode.queues import Pool, Priority

from .errors import Location


class MatchMode(StrEnum):
    FIRST_MATCH = "first-match"  # the first matching rule decides; later rules are not looked at
    ALL_MATCH = "all-match"  # every matching rule makes its own job


class Trigger(StrEnum):
    SERIES = "series"  # checked when a series is complete (Orthanc's STABLE_SERIES)
    STUDY = "study"  # checked for each series when its whole study is complete (STABLE_STUDY)


class Action(StrEnum):
    RUN = "run"  # make a job
    IGNORE = "ignore"  # decide "ignored" (first-match: stop here; all-match: veto every job)


class NotifyEvent(StrEnum):
    """The job states a rule's webhook can be told about (never "ignored": that is no job)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _webhook_item(value: Any) -> Any:
    """``notify: [ris]`` is short for ``notify: [{webhook: ris}]`` (every event)."""
    if isinstance(value, str):
        return {"webhook": value}
    if not isinstance(value, dict):
        raise ValueError(
            "write a webhook name from the node's settings, or {webhook: NAME, events: [...]}"
        )
    return value


class NotifyModel(BaseModel):
    """One item of a rule's ``notify:``: a webhook named in settings and the events it wants."""

    model_config = ConfigDict(extra="forbid")

    webhook: StrictStr = Field(min_length=1)
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NotifyEvent), min_length=1)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a yes/no value is not a number or text here; put it in quotes")
    return value


Number = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
Scalar = StrictStr | StrictInt | Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Operators(BaseModel):
    """The operators of one attribute test, e.g. ``SliceThickness: {ge: 1, le: 3}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    matches: StrictStr | None = None
    ignore_case: StrictBool = False
    gt: Number | None = None
    ge: Number | None = None
    lt: Number | None = None
    le: Number | None = None
    exists: StrictBool | None = None
    missing: StrictBool | None = None


OPERATOR_NAMES = ("equals", "in", "matches", "gt", "ge", "lt", "le", "exists", "missing")
RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RuleModel(BaseModel):
    """One rule as written in the file (its condition still raw)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(pattern=RULE_NAME_PATTERN)]
    description: StrictStr | None = None
    enabled: StrictBool = True
    action: Action = Action.RUN
    trigger: Trigger = Trigger.SERIES
    when: dict[Any, Any]
    pipeline: StrictStr | None = Field(default=None, min_length=1)
    outputs: list[OutputKind] = Field(default_factory=lambda: [OutputKind.SEG], min_length=1)
    destinations: list[StrictStr] = Field(default_factory=lambda: ["orthanc"], min_length=1)
    priority: Priority = Priority.NORMAL
    pool: Pool | None = None
    params: dict[str, JsonValue] = Field(default_factory=dict)
    notify: list[Annotated[NotifyModel, BeforeValidator(_webhook_item)]] = Field(
        default_factory=list
    )


class RulesFileModel(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    mode: MatchMode
    rules: list[RuleModel]


_FIELD_HINTS: dict[str, str] = {
    "version": "write `version: 1` at the top of the file",
    "mode": (
        "write `mode: first-match` (the first matching rule decides) or `mode: all-match` "
        "(every matching rule makes a job)"
    ),
    "rules": "list the rules under `rules:` (an empty list `rules: []` ignores every series)",
    "name": "every rule needs a unique `name:`",
    "when": "every rule needs a `when:` condition, e.g. `when: {Modality: CT}`",
    "webhook": "name a webhook of the node's settings, e.g. `{webhook: ris, events: [done]}`",
}


def allowed_fields(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def validation_problems(
    error: ValidationError, model: type[BaseModel], base: Location = ()
) -> list[tuple[Location, str]]:
    """Each pydantic error as (location in the YAML document, message for a person).

    A union (text or number) fails once per alternative; those failures become one message.
    """
    grouped: dict[Location, list[tuple[str, str]]] = {}
    inputs: dict[Location, Any] = {}
    for item in error.errors(include_url=False):
        loc = tuple(part for part in item["loc"] if not _is_branch_label(part))
        location: Location = (*base, *loc)
        kind = item["type"]
        field = str(loc[-1]) if loc else ""
        if kind == "extra_forbidden":
            owner = _owner_model(model, loc)
            allowed = ", ".join(allowed_fields(owner))
            what = "operator" if owner is Operators else "field"
            message = f"unknown {what} {field!r}; allowed: {allowed}"
        elif kind == "string_pattern_mismatch" and field == "name":
            message = (
                "a rule name is 1 to 64 letters, digits, '-', '_' or '.', starting with a "
                "letter or digit"
            )
            inputs.setdefault(location, item.get("input"))
        elif kind == "missing":
            hint = _FIELD_HINTS.get(field)
            message = f"required field {field!r} is missing" + (f": {hint}" if hint else "")
        else:
            message = item["msg"]
            inputs.setdefault(location, item.get("input"))
        grouped.setdefault(location, []).append((kind, message))
    problems = []
    for location, items in grouped.items():
        kinds = {kind for kind, _ in items}
        if len(items) > 1 and kinds <= _SCALAR_TYPE_ERRORS:
            message = "Input should be text or a number"
        else:
            message = "; or ".join(dict.fromkeys(message for _, message in items))
        if location in inputs:
            message = f"{message} (got {_shown(inputs[location])})"
            if isinstance(inputs[location], bool) and "string_type" in kinds:
                message += (
                    "; YAML reads unquoted yes/no/on/off/true/false as a yes/no value, "
                    "so put the text in quotes"
                )
        problems.append((location, message))
    return problems


_SCALAR_TYPE_ERRORS = frozenset({"string_type", "int_type", "float_type", "finite_number"})


def _owner_model(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model whose field list applies at ``loc`` (for 'unknown field' messages)."""
    if model is RulesFileModel and len(loc) >= 3 and loc[0] == "rules":
        if len(loc) >= 5 and loc[2] == "notify":
            return NotifyModel
        return RuleModel
    return model


def _is_branch_label(part: Any) -> bool:
    # pydantic names union branches and validators in locations ("function-after[...]", "str").
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
