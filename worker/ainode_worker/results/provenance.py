"""Who made a result and under which rule: the words and numbers written into every output."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from ainode.jobs import OutputKind

MANUFACTURER = "AINODE"
MANUFACTURER_MODEL_NAME = "AINODE AI node"
# ContentCreatorName (PN, Type 2): the node made the content, not a person.
CONTENT_CREATOR = "AINODE^"

try:  # the version lives in pyproject.toml only
    SOFTWARE_VERSION = version("ainode")
except PackageNotFoundError:  # running from a source tree that was never installed
    SOFTWARE_VERSION = "unknown"

# DICOM's LO value representation (SeriesDescription, ContentDescription, ...) holds 64 characters.
_LO_MAX = 64

# Result series sort after the scanner's series in a viewer. The hundreds say the output kind
# and the last two digits the pipeline, so results of two pipelines or kinds in one study differ.
_SERIES_BASE = 9000
_PIPELINE_SLOTS = 100
_KINDS: dict[OutputKind, tuple[int, str]] = {
    OutputKind.SEG: (1, "SEG"),
    OutputKind.SEG_LABELMAP: (2, "SEG-LM"),
    OutputKind.SEG_FRACTIONAL: (3, "SEG-P"),
    OutputKind.RTSTRUCT: (4, "RTSS"),
    OutputKind.SR: (5, "SR"),
}
# Added when a result's number would equal its source series' own number.
_COLLISION_STEP = 1000


@dataclass(frozen=True)
class Provenance:
    """The model and rule behind a result; also the key of its deterministic UIDs."""

    model_id: str
    model_name: str
    model_version: str
    rule: str
    pipeline: str

    def series_description(self, kind: OutputKind) -> str:
        """``<kind> <model id> (<rule>)``, at most DICOM's 64 characters.

        Viewers cut descriptions short (OHIF's thumbnails after about 20 characters), so the
        output kind and the model come first and the rule last.
        """
        return truncate(f"{_kind(kind)[1]} {self.model_id} ({self.rule})", _LO_MAX)

    def series_number(self, kind: OutputKind, source_series_number: object = None) -> int:
        """``9kpp``: k the output kind, pp the pipeline; never the source series' number."""
        slot = zlib.crc32(self.pipeline.encode()) % _PIPELINE_SLOTS
        number = _SERIES_BASE + 100 * _kind(kind)[0] + slot
        if str(source_series_number or "").strip() == str(number):
            number += _COLLISION_STEP
        return number

    def content_description(self) -> str:
        return truncate(f"{self.model_name} {self.model_version}", _LO_MAX)


def _kind(kind: OutputKind) -> tuple[int, str]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"{kind} is not a DICOM output") from None


def truncate(text: str, limit: int = _LO_MAX) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with '...'."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rstrip() + "..."
