"""The worker's test gate (``job_test_gate_dir``): hold a job in a step, see who holds it.

While ``<gate>/hold-<step>`` exists, a worker process in ``step`` (inference, store) waits,
after writing ``<step>-<pid>.json`` with the job and attempt it holds
(``worker/ainode_worker/jobrunner.py``). Tests decide when the job goes on, so nothing depends
on how fast the machine is.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any


def holding(gate: Path, step: str) -> Iterator[Path]:
    """Hold ``step`` until the test removes the yielded file, or the fixture ends.

    Markers of earlier holds are removed first, so only this hold's processes are seen.
    """
    for marker in gate.glob("*.json"):
        marker.unlink()
    hold = gate / f"hold-{step}"
    hold.touch()
    yield hold
    hold.unlink(missing_ok=True)


def held(
    gate: Path, job_id: str, seen: Collection[str] = (), step: str = "inference"
) -> dict[str, Any] | None:
    """The process waiting in ``step`` for ``job_id`` with an attempt not in ``seen``: the
    marker's fields and its ``pid``; None while there is none."""
    for marker in sorted(gate.glob(f"{step}-*.json")):
        try:
            found = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):  # being written
            continue
        if found["job_id"] == job_id and found["attempt"] not in seen:
            return {**found, "pid": int(marker.stem.removeprefix(f"{step}-"))}
    return None


def release_all(gate: Path) -> None:
    """Let every held step go on (before stopping the node, so no process waits forever)."""
    for hold in gate.glob("hold-*"):
        hold.unlink()
