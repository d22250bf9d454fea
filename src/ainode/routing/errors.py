"""The one error a routing-rules file can raise, with the file, line and field at fault.

A hospital engineer edits the rules file by hand, so every problem names where it is
(``routing-rules.yaml, line 14, rules[0].when.Modality: ...``) and all problems found in one
pass are reported together rather than one per edit-and-reload cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ainode.yamlmarks import Location

__all__ = ["Location", "Problem", "RulesError", "format_field"]


def format_field(location: Location) -> str:
    """``("rules", 0, "when", "Modality")`` -> ``rules[0].when.Modality``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a rules file."""

    line: int | None  # 1-based; None when the problem is about the file as a whole
    field: str  # dotted path such as ``rules[2].pipeline``; "" for the whole file
    message: str
    rule: str | None = None  # the name of the rule concerned, when it has a readable one

    def describe(self) -> str:
        where = f"line {self.line}" if self.line is not None else ""
        if self.field:
            where = f"{where}, {self.field}" if where else self.field
        if self.rule:
            where = f"{where} (rule {self.rule!r})" if where else f"rule {self.rule!r}"
        return f"{where}: {self.message}" if where else self.message


class RulesError(Exception):
    """The routing rules could not be loaded; ``problems`` lists everything found."""

    def __init__(self, path: Path | str, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("a RulesError needs at least one problem")
        self.path = Path(path)
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(str(self))

    @property
    def line(self) -> int | None:
        return self.problems[0].line

    @property
    def field(self) -> str:
        return self.problems[0].field

    @property
    def message(self) -> str:
        return self.problems[0].message

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.path}, {self.problems[0].describe()}"
        lines = [f"{self.path}: {len(self.problems)} problems in the routing rules:"]
        lines += [f"  {problem.describe()}" for problem in self.problems]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for the REST route that shows why new rules were refused."""
        return {
            "path": str(self.path),
            "message": str(self),
            "problems": [
                {"line": p.line, "field": p.field, "rule": p.rule, "message": p.message}
                for p in self.problems
            ],
        }
