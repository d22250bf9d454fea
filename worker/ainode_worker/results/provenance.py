"""Who made a result and under which rule: the words and numbers written into every output."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from ainode.jobs import OutputKind

MANUFACTURER = "AINODE"
MANUFACTURER_MODEL_NAME = "AINODE AI node"

try:  # the version lives in pyproject.toml only
    SOFTWARE_VERSION = version("ainode")
except PackageNotFoundError:  # running from a source tree that was never installed
    SOFTWARE_VERSION = "unknown"

# DICOM's LO value representation (SeriesDescription, ContentDescription, ...) holds 64 characters.
_LO_MAX = 64

# Result series sort after the scanner's series in a viewer and stay apart by output kind.
_SERIES_NUMBERS: dict[OutputKind, int] = {
    OutputKind.SEG: 9001,
    OutputKind.SEG_LABELMAP: 9002,
    OutputKind.SEG_FRACTIONAL: 9003,
    OutputKind.RTSTRUCT: 9004,
    OutputKind.SR: 9005,
}


@dataclass(frozen=True)
class Provenance:
    """The model and rule behind a result; also the key of its deterministic UIDs."""

    model_id: str
    model_name: str
    model_version: str
    rule: str
    pipeline: str

    def series_description(self) -> str:
        """``AI: <model> (<rule>)``, shortened to DICOM's 64 characters by trimming the model."""
        suffix = f" ({self.rule})"
        head = "AI: "
        room = _LO_MAX - len(head) - len(suffix)
        name = self.model_name
        if room < 8:  # an absurdly long rule name: cut the whole text instead
            return truncate(f"{head}{name}{suffix}", _LO_MAX)
        return f"{head}{truncate(name, room)}{suffix}"

    def content_description(self) -> str:
        return truncate(f"{self.model_name} {self.model_version}", _LO_MAX)


def series_number(kind: OutputKind) -> int:
    """The SeriesNumber of a result series of this kind."""
    try:
        return _SERIES_NUMBERS[kind]
    except KeyError:
        raise ValueError(f"{kind} is not a DICOM output") from None


def truncate(text: str, limit: int = _LO_MAX) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with '...'."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rstrip() + "..."
