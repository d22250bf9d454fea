"""Rule regular expressions, compiled with RE2: matching time is linear in the value's length.

Python's ``re`` backtracks: ``(a+)+$`` against 28 "a" and a "!" took 19 s, doubling with each
character, and the plugin held Orthanc's Python lock meanwhile (every ``/ai`` route and C-STORE
stalled). RE2 has no backtracking, so it lacks backreferences and lookaround; a rule using them
is refused when the rules are loaded, with the construct named, instead of being run slowly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re2

MAX_PROGRAM_BYTES = 1 << 20  # RE2's memory for one compiled expression (default 8 MiB)


class RegexError(ValueError):
    """The expression is not valid RE2 syntax (message says which construct and why)."""


@dataclass(frozen=True)
class LinearRegex:
    """A compiled RE2 expression, searched anywhere in a value like ``re.search``."""

    pattern: str
    ignore_case: bool
    _compiled: Any = field(compare=False, repr=False)

    def search(self, value: str) -> bool:
        return self._compiled.search(value) is not None


def compile_linear(pattern: str, ignore_case: bool = False) -> LinearRegex:
    """Compile ``pattern`` with RE2 or raise :class:`RegexError` saying what RE2 refused."""
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False  # the refusal goes to the rules error, not to stderr
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as error:
        raise RegexError(_reason(pattern, error)) from None
    return LinearRegex(pattern, ignore_case, compiled)


def _reason(pattern: str, error: Exception) -> str:
    detail = error.args[0] if error.args else ""
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    hint = ""
    if any(look in pattern for look in ("(?=", "(?!", "(?<=", "(?<!")):
        hint = " (lookahead and lookbehind are not supported: rules use RE2, linear-time)"
    elif "invalid escape" in text and any(f"\\{digit}" in pattern for digit in "123456789"):
        hint = " (backreferences are not supported: rules use RE2, linear-time)"
    return (text or "not a valid RE2 expression") + hint
