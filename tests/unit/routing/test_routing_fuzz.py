"""Fuzzing the rules parser: whatever the document, the only error is a RulesError."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ainode.routing import RulesError, RuleSet, parse_rules

# Words that steer random documents into the schema's corners rather than bouncing off at once.
WORDS = [
    "version", "mode", "rules", "name", "when", "pipeline", "outputs", "destinations",
    "priority", "pool", "params", "enabled", "action", "trigger", "description",
    "all", "any", "not", "equals", "in", "matches", "ignore_case", "gt", "ge", "lt", "le",
    "exists", "missing", "Modality", "ImageType", "InstanceCount", "PatientName", "Modalty",
    "first-match", "all-match", "SEG", "RTSTRUCT", "orthanc", "dicom:PACS", "high", "gpu",
    "ignore", "study", "CT", "(", "[a-", "^x$", "",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-5, 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.integers(0, 3)), children, max_size=4),
    ),
    max_leaves=25,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), scalars),
        "mode": st.one_of(st.sampled_from(["first-match", "all-match"]), scalars),
        "rules": st.lists(
            st.fixed_dictionaries(
                {"name": st.one_of(st.sampled_from(["a", "b", "off"]), scalars)},
                optional={
                    "when": values,
                    "pipeline": st.one_of(st.just("p"), scalars),
                    "outputs": values,
                    "destinations": values,
                    "priority": scalars,
                    "pool": scalars,
                    "params": values,
                    "action": scalars,
                    "trigger": scalars,
                    "x": scalars,
                },
            ),
            max_size=3,
        ),
        "extra": values,
    },
)
YAML_PIECES = [
    "version: 1\n", "mode: first-match\n", "rules:\n", "  - name: a\n", "    when:\n",
    "      Modality: CT\n", "      all: [", "{", "}", "]", "- ", ": ", "&a ", "*a ", "!!int ",
    "!!python/object:x ", "'", '"', "\t", "\n", "  ", "#", "? ", "<<: *a\n", "---\n",
    "!!binary ", "2024-13-45", "\x00", "\ufeff", "%YAML 1.1\n", "|\n", ">-\n", "~",
]  # fmt: skip
yaml_ish = st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=6)), max_size=40)


# YAML ends lines at these, not only at "\n" (so does the line a problem names).
YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def check(text: str | bytes) -> None:
    try:
        result = parse_rules(text, source="fuzz.yaml", known_pipelines={"p"})
    except RulesError as error:
        assert error.problems
        decoded = text if isinstance(text, str) else text.decode("utf-8", "replace")
        lines = len(YAML_LINE_BREAK.split(decoded))
        for problem in error.problems:
            assert problem.line is None or 1 <= problem.line <= lines
        assert str(error)
    else:
        assert isinstance(result, RuleSet)
        result.evaluate({"Modality": "CT", "ImageType": "A\\B", "InstanceCount": "3"})


# FUZZ_EXAMPLES=5000 for a longer hunt than the quick default.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(documents)
def test_structured_documents(document: dict[str, Any]) -> None:
    check(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(yaml_ish)
def test_yaml_ish_text(pieces: list[str]) -> None:
    check("".join(pieces))


@FUZZ
@given(st.binary(max_size=64))
def test_arbitrary_bytes(data: bytes) -> None:
    check(b"version: 1\nmode: all-match\nrules: " + data)
