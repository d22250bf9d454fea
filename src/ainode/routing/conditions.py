"""Declarative conditions over a series' attributes: parsed once at load, then only evaluated.

Syntax under a rule's ``when:`` (see ``routing-rules.yaml`` for the commented reference)::

    Modality: CT                          # equals (shorthand)
    InstanceCount: {ge: 10}               # gt, ge, lt, le compare numbers
    BodyPartExamined: {in: [CHEST, ABDOMEN]}
    SeriesDescription: {matches: "abdo|pelvis", ignore_case: true}   # RE2 regex, searched anywhere
    ContrastBolusAgent: {exists: true}    # or {missing: true}
    all: [...]   any: [...]   not: {...}  # combinators; several keys in one mapping = all

Every test on a multi-valued attribute (ImageType) holds when *any* of its values passes it, and
a test on a missing attribute fails (``not`` turns that around). Nothing here is ever executed
as code: a condition is a tree of the small frozen classes below.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .attributes import AttributeValues, attribute_problem
from .errors import Location
from .regex import LinearRegex, RegexError, compile_linear
from .schema import OPERATOR_NAMES, Operators, validation_problems

Facts = Mapping[str, AttributeValues]
Report = Callable[[Location, str], None]

MAX_DEPTH = 16
COMBINATORS = ("all", "any", "not")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _shown(values: AttributeValues) -> str:
    text = "\\".join(values)
    return repr(text if len(text) <= 60 else text[:57] + "...")


# --- checks on the values of one attribute -------------------------------------------------


class Check(ABC):
    @abstractmethod
    def passes(self, values: AttributeValues) -> bool: ...

    @abstractmethod
    def describe(self) -> str: ...


def _equal(value: str, expected: str | float, ignore_case: bool) -> bool:
    if isinstance(expected, str):
        return value.casefold() == expected.casefold() if ignore_case else value == expected
    number = _number(value)
    return number is not None and number == expected


@dataclass(frozen=True)
class Equals(Check):
    expected: str | float
    ignore_case: bool = False

    def passes(self, values: AttributeValues) -> bool:
        return any(_equal(value, self.expected, self.ignore_case) for value in values)

    def describe(self) -> str:
        return f"equals {self.expected!r}" + (" (any case)" if self.ignore_case else "")


@dataclass(frozen=True)
class OneOf(Check):
    options: tuple[str | float, ...]
    ignore_case: bool = False

    def passes(self, values: AttributeValues) -> bool:
        return any(
            _equal(value, option, self.ignore_case) for value in values for option in self.options
        )

    def describe(self) -> str:
        return "is one of " + ", ".join(repr(option) for option in self.options)


@dataclass(frozen=True)
class Matches(Check):
    pattern: LinearRegex

    def passes(self, values: AttributeValues) -> bool:
        return any(self.pattern.search(value) for value in values)

    def describe(self) -> str:
        flags = "i" if self.pattern.ignore_case else ""
        return f"matches /{self.pattern.pattern}/{flags}"


_COMPARISONS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "gt": (">", operator.gt),
    "ge": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "le": ("<=", operator.le),
}


@dataclass(frozen=True)
class Compare(Check):
    op: str  # gt | ge | lt | le
    limit: float

    def passes(self, values: AttributeValues) -> bool:
        compare = _COMPARISONS[self.op][1]
        numbers = (_number(value) for value in values)
        return any(number is not None and compare(number, self.limit) for number in numbers)

    def describe(self) -> str:
        return f"{_COMPARISONS[self.op][0]} {self.limit:g}"


@dataclass(frozen=True)
class Present(Check):
    expected: bool  # True: exists; False: missing

    def passes(self, values: AttributeValues) -> bool:
        return bool(values) == self.expected

    def describe(self) -> str:
        return "exists" if self.expected else "is missing"


# --- the condition tree --------------------------------------------------------------------


class Condition(ABC):
    @abstractmethod
    def holds(self, facts: Facts) -> bool: ...

    @abstractmethod
    def why_not(self, facts: Facts) -> str | None:
        """None when the condition holds, else the first reason it does not, in words."""

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def attributes(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class AttributeTest(Condition):
    attribute: str
    checks: tuple[Check, ...]

    def holds(self, facts: Facts) -> bool:
        values = facts.get(self.attribute, ())
        return all(check.passes(values) for check in self.checks)

    def why_not(self, facts: Facts) -> str | None:
        values = facts.get(self.attribute, ())
        for check in self.checks:
            if not check.passes(values):
                if not values and not isinstance(check, Present):
                    return f"{self.attribute} is missing (wanted: {check.describe()})"
                shown = _shown(values) if values else "missing"
                return f"{self.attribute} is {shown}, which fails: {check.describe()}"
        return None

    def describe(self) -> str:
        return f"{self.attribute} " + " and ".join(check.describe() for check in self.checks)

    def attributes(self) -> frozenset[str]:
        return frozenset({self.attribute})


@dataclass(frozen=True)
class AllOf(Condition):
    children: tuple[Condition, ...]

    def holds(self, facts: Facts) -> bool:
        return all(child.holds(facts) for child in self.children)

    def why_not(self, facts: Facts) -> str | None:
        for child in self.children:
            reason = child.why_not(facts)
            if reason is not None:
                return reason
        return None

    def describe(self) -> str:
        return "(" + " and ".join(child.describe() for child in self.children) + ")"

    def attributes(self) -> frozenset[str]:
        return frozenset().union(*(child.attributes() for child in self.children))


@dataclass(frozen=True)
class AnyOf(Condition):
    children: tuple[Condition, ...]

    def holds(self, facts: Facts) -> bool:
        return any(child.holds(facts) for child in self.children)

    def why_not(self, facts: Facts) -> str | None:
        reasons = []
        for child in self.children:
            reason = child.why_not(facts)
            if reason is None:
                return None
            reasons.append(reason)
        return "none of the alternatives holds: " + "; ".join(reasons)

    def describe(self) -> str:
        return "(" + " or ".join(child.describe() for child in self.children) + ")"

    def attributes(self) -> frozenset[str]:
        return frozenset().union(*(child.attributes() for child in self.children))


@dataclass(frozen=True)
class NotOf(Condition):
    child: Condition

    def holds(self, facts: Facts) -> bool:
        return not self.child.holds(facts)

    def why_not(self, facts: Facts) -> str | None:
        if self.child.holds(facts):
            return f"excluded by not: {self.child.describe()}"
        return None

    def describe(self) -> str:
        return f"not {self.child.describe()}"

    def attributes(self) -> frozenset[str]:
        return self.child.attributes()


# --- parsing -------------------------------------------------------------------------------


def parse_condition(data: Any, location: Location, report: Report, depth: int = 0) -> Condition:
    """Build a condition from YAML data; problems go to ``report`` (the result is then unused)."""
    if depth > MAX_DEPTH:
        report(location, f"conditions are nested more than {MAX_DEPTH} levels deep")
        return AllOf(())
    if not isinstance(data, Mapping) or not data:
        report(
            location,
            "a condition is a non-empty mapping such as {Modality: CT} or {all: [...]} "
            f"(got {_shown_data(data)})",
        )
        return AllOf(())
    parts: list[Condition] = []
    for key, value in data.items():
        here: Location = (*location, key if isinstance(key, str | int) else str(key))
        if not isinstance(key, str):
            report(here, f"{key!r} is not an attribute keyword or all/any/not")
        elif key in ("all", "any"):
            parts.append(_parse_combinator(key, value, here, report, depth))
        elif key == "not":
            parts.append(NotOf(parse_condition(value, here, report, depth + 1)))
        else:
            problem = attribute_problem(key)
            if problem:
                report(here, problem)
            parts.append(AttributeTest(key, _parse_checks(value, here, report)))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _shown_data(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_combinator(
    key: str, value: Any, location: Location, report: Report, depth: int
) -> Condition:
    if not isinstance(value, list) or not value:
        report(location, f"{key!r} takes a non-empty list of conditions (got {_shown_data(value)})")
        return AllOf(())
    children = tuple(
        parse_condition(item, (*location, index), report, depth + 1)
        for index, item in enumerate(value)
    )
    return AllOf(children) if key == "all" else AnyOf(children)


def _parse_checks(value: Any, location: Location, report: Report) -> tuple[Check, ...]:
    if isinstance(value, bool):
        report(
            location,
            "a yes/no value cannot be matched; YAML reads unquoted yes/no/on/off as true/false, "
            'so quote it (e.g. "ON")',
        )
        return ()
    if value is None:
        report(location, "no value given; write e.g. `Modality: CT` or `Modality: {exists: true}`")
        return ()
    if isinstance(value, list):
        report(
            location,
            "a list is ambiguous here; write {in: [...]} to accept any of several values",
        )
        return ()
    if isinstance(value, str | int | float):
        if isinstance(value, float) and value != value:  # NaN never equals anything
            report(location, "not a number (.nan) cannot be matched")
            return ()
        return (Equals(value),)
    if not isinstance(value, Mapping):
        report(location, f"expected a value or a mapping of operators (got {_shown_data(value)})")
        return ()
    try:
        ops = Operators.model_validate(value)
    except ValidationError as error:
        for where, message in validation_problems(error, Operators, location):
            report(where, message)
        return ()
    return _checks_from(ops, value, location, report)


def _checks_from(
    ops: Operators, raw: Mapping[Any, Any], location: Location, report: Report
) -> tuple[Check, ...]:
    checks: list[Check] = []
    if ops.equals is not None:
        checks.append(Equals(ops.equals, ops.ignore_case))
    if ops.in_ is not None:
        checks.append(OneOf(tuple(ops.in_), ops.ignore_case))
    if ops.matches is not None:
        try:
            checks.append(Matches(compile_linear(ops.matches, ops.ignore_case)))
        except RegexError as error:
            report((*location, "matches"), f"invalid regular expression {ops.matches!r}: {error}")
    for name in ("gt", "ge", "lt", "le"):
        limit = getattr(ops, name)
        if limit is not None:
            checks.append(Compare(name, limit))
    if ops.exists is not None:
        checks.append(Present(ops.exists))
    if ops.missing is not None:
        checks.append(Present(not ops.missing))
    if not any(name in raw for name in OPERATOR_NAMES):
        report(location, f"no operator given; use one of: {', '.join(OPERATOR_NAMES)}")
    if ops.ignore_case and ops.equals is None and ops.in_ is None and ops.matches is None:
        report((*location, "ignore_case"), "ignore_case applies only to equals, in and matches")
    return tuple(checks)
