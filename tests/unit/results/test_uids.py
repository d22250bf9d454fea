"""Deterministic result UIDs: same job, same UIDs; any changed input, different UIDs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ainode_worker.results import result_uid
from ainode_worker.results.uids import UidRole
from pydicom.uid import UID

from ainode.jobs import OutputKind

BASE: dict[str, Any] = {
    "source_series_uid": "1.2.826.0.1.3680043.8.498.1",
    "rule": "ct-abdomen",
    "pipeline": "abdomen",
    "model_version": "1.2.0",
    "kind": OutputKind.SEG,
    "role": UidRole.INSTANCE,
}


def test_same_inputs_same_uid_and_valid() -> None:
    uid = result_uid(**BASE)
    assert uid == result_uid(**BASE)
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid)
    assert len(uid) <= 64
    assert UID(uid).is_valid


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_series_uid", "1.2.826.0.1.3680043.8.498.2"),
        ("rule", "ct-spheres"),
        ("pipeline", "spheres"),
        ("model_version", "1.2.1"),
        ("kind", OutputKind.RTSTRUCT),
        ("role", UidRole.SERIES),
    ],
)
def test_any_changed_input_changes_the_uid(field: str, value: object) -> None:
    assert result_uid(**{**BASE, field: value}) != result_uid(**BASE)


def test_fields_cannot_be_shifted_into_each_other() -> None:
    a = result_uid(**{**BASE, "rule": "ab", "pipeline": "c"})
    b = result_uid(**{**BASE, "rule": "a", "pipeline": "bc"})
    assert a != b
