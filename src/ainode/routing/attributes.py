"""Which attributes rules may test, and how attribute values are normalised for matching.

Rules name attributes by their DICOM keyword (``Modality``, ``SliceThickness``) or by one of the
few node-computed attributes in :data:`SYNTHETIC_ATTRIBUTES`. Every value is normalised to a
tuple of strings, because Orthanc's JSON gives numbers as text and multi-valued attributes
(``ImageType``) as one backslash-separated string: a test on a multi-valued attribute matches
when *any* of its values matches.

Patient-identifying attributes are never available to rules (and the facts builder drops them),
so a rule can never make a decision on, or a job record carry, a patient's name or identifier.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_dict

AttributeValues = tuple[str, ...]

SYNTHETIC_ATTRIBUTES: Mapping[str, str] = {
    "InstanceCount": "number of instances of the series held by the node when it was checked",
    "CallingAET": "AE title of the modality or PACS that sent the series (C-STORE calling AE)",
    "RemoteAET": "the same as CallingAET (Orthanc's name for it)",
    "CalledAET": "AE title the sender addressed (this node's, or an alias it accepts)",
    "RemoteIP": "IP address the series was received from",
    "Origin": "how the series arrived: DicomProtocol, RestApi, Plugins, Lua or WebDav",
}

# Identifiers and free text about the patient. Person names (VR PN) are excluded as a class.
_IDENTIFYING: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthDateInAlternativeCalendar",
        "PatientDeathDateInAlternativeCalendar",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "PatientInsurancePlanCodeSequence",
        "PatientComments",
        "PatientInstitutionResidence",
        "PatientReligiousPreference",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "MedicalRecordLocator",
        "AccessionNumber",
        "AdmissionID",
        "AdditionalPatientHistory",
        "MilitaryRank",
        "BranchOfService",
        "Occupation",
        "CountryOfResidence",
        "RegionOfResidence",
    }
)


def is_identifying(keyword: str) -> bool:
    """True for attributes that identify a patient (or name any person)."""
    if keyword in _IDENTIFYING:
        return True
    tag = keyword_dict.get(keyword)
    return tag is not None and dictionary_VR(tag) == "PN"


def is_known_attribute(keyword: str) -> bool:
    return keyword in SYNTHETIC_ATTRIBUTES or keyword in keyword_dict


def attribute_problem(keyword: str) -> str | None:
    """Why a rule may not test ``keyword``, or None when it may."""
    if is_identifying(keyword):
        return (
            f"{keyword} identifies a patient or person; rules never see such attributes "
            "(privacy), route on the series instead"
        )
    if is_known_attribute(keyword):
        return None
    close = difflib.get_close_matches(keyword, _all_keywords(), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (
        f"{keyword!r} is not a DICOM attribute keyword nor one of "
        f"{', '.join(SYNTHETIC_ATTRIBUTES)}{hint} (keywords are case-sensitive, e.g. "
        "SeriesDescription)"
    )


@lru_cache(maxsize=1)
def _all_keywords() -> tuple[str, ...]:
    return (*SYNTHETIC_ATTRIBUTES, *keyword_dict)


def normalize_value(value: object) -> AttributeValues:
    """Any JSON-ish attribute value as a tuple of non-empty, stripped strings.

    ``"ORIGINAL\\PRIMARY\\AXIAL"`` and ``["ORIGINAL", "PRIMARY", "AXIAL"]`` give the same
    three values; ``None`` and ``""`` give none (the attribute counts as missing); numbers
    become their text. Nested mappings (DICOM sequences) carry no matchable value and are skipped.
    """
    if value is None or isinstance(value, Mapping):
        return ()
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, int | float):
        return (str(value),)
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split("\\") if part.strip())
    if isinstance(value, bytes):
        return ()
    if isinstance(value, Iterable):
        return tuple(item for element in value for item in normalize_value(element))
    return (str(value).strip(),) if str(value).strip() else ()


# The longest value each VR allows (PS3.5 table 6.2-1), in characters. Unlimited text (UT, UC,
# UR) and unknown VRs get DEFAULT_MAX_CHARS: no rule needs more, and a bound on every value is a
# bound on the time any matcher spends on it.
VR_MAX_CHARS: Mapping[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 16,
    "UI": 64,
}
DEFAULT_MAX_CHARS = 1024
SYNTHETIC_MAX_CHARS = 64  # AE titles, IP addresses, origin names
MAX_VALUES = 64  # values kept of one multi-valued attribute


@lru_cache(maxsize=4096)
def max_value_chars(keyword: str) -> int:
    """The longest value of ``keyword`` a rule sees: its VR's maximum length."""
    if keyword in SYNTHETIC_ATTRIBUTES:
        return SYNTHETIC_MAX_CHARS
    tag = keyword_dict.get(keyword)
    if tag is None:
        return DEFAULT_MAX_CHARS
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return DEFAULT_MAX_CHARS
    return VR_MAX_CHARS.get(vr, DEFAULT_MAX_CHARS)


def cap_values(keyword: str, values: AttributeValues) -> AttributeValues:
    """``values`` with each cut to the VR's maximum length and at most :data:`MAX_VALUES` kept:
    a sender can make a value longer than DICOM allows, never make a rule slower for it."""
    limit = max_value_chars(keyword)
    return tuple(value[:limit] for value in values[:MAX_VALUES])


def normalize_attributes(values: Mapping[str, object]) -> dict[str, AttributeValues]:
    """A plain mapping of keyword -> value, normalised and capped (:func:`cap_values`);
    attributes without a value are dropped."""
    result: dict[str, AttributeValues] = {}
    for keyword, value in values.items():
        normalized = cap_values(keyword, normalize_value(value))
        if normalized:
            result[keyword] = normalized
    return result
