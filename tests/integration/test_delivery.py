"""Delivery apart from inference: a destination that holds or refuses results does not hold
the worker that runs models; per-destination retry, cancel during delivery and exactly-once
results still hold (worker/ainode_worker/delivery.py).

The delivery step is held by the test gate (``job_test_gate_dir``, ``hold-store``) as a PACS
too slow to wait for would hold it; the PACS itself is DCMTK's storescp on a port of the
test's own, with nothing listening there at first (a dead PACS). Nothing depends on speed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicompeers import start_storescp, stop
from jobgate import held, holding, release_all
from nodeharness import (
    ONNX_RULES,
    Node,
    free_port,
    start_node,
    wait_for,
    write_phantom,
    write_rules,
)

from ainode.phantoms import SeriesIds

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RUN_TIMEOUT_S = 240.0
PACS_AET = "REMOTEPACS"
RULES = ONNX_RULES.replace("destinations: [orthanc]", 'destinations: [orthanc, "dicom:PACS"]')


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def pacs_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, gate: Path, pacs_port: int) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("delivery")
    started = start_node(
        folder / "node",
        routing_rules=write_rules(folder / "rules.yaml", RULES),
        remote_modalities={"PACS": {"aet": PACS_AET, "host": "127.0.0.1", "port": pacs_port}},
        dispatch_sweep_s=1.0,
        job_test_gate_dir=gate,
    )
    yield started
    release_all(gate)
    started.stop()


@pytest.fixture
def hold_store(gate: Path) -> Iterator[Path]:
    yield from holding(gate, "store")


def delivering(gate: Path, job_id: str) -> dict[str, Any] | None:
    """The delivery process holding ``job_id`` at the gate, if any."""
    return held(gate, job_id, step="store")


def push(node: Node, tmp_path: Path, seed: int) -> tuple[SeriesIds, dict[str, Any]]:
    paths, ids = write_phantom(tmp_path / f"ct{seed}", 16, seed=seed)
    node.storescu(paths)
    return ids, node.wait_for_decision(ids.series_uid, timeout_s=60)


def segs(node: Node, ids: SeriesIds) -> int:
    return len(node.study_series(ids.study_uid, "SEG"))


def test_a_held_delivery_does_not_hold_inference_and_a_dead_pacs_is_retried_alone(
    node: Node, gate: Path, hold_store: Path, pacs_port: int, tmp_path: Path
) -> None:
    first_ids, first = push(node, tmp_path, seed=61)
    held = wait_for(lambda: delivering(gate, first["id"]), RUN_TIMEOUT_S, 0.1, "the first delivery")
    # The first series' delivery is held: the next series' model runs all the same.
    second_ids, second = push(node, tmp_path, seed=62)
    wait_for(lambda: delivering(gate, second["id"]), RUN_TIMEOUT_S, 0.1, "the second delivery")
    assert delivering(gate, first["id"]) == held, "the first delivery is still held"
    running = node.json(f"/ai/jobs/{first['id']}")
    assert running["state"] == "running", "the job is not done before its delivery"
    assert segs(node, first_ids) == 0, "nothing stored before the delivery"

    hold_store.unlink()  # the PACS is dead: orthanc gets the results, the PACS fails
    for ids in (first_ids, second_ids):
        job = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
        assert job["state"] == "failed", job
        assert job["error"].startswith("dicom:PACS: "), job["error"]
        states = {s["destination"]["kind"]: s["state"] for s in job["destinations"]}
        assert states == {"orthanc": "sent", "dicom": "failed"}, states
        assert job["detail"]["delivered_by"].startswith("delivery@"), job["detail"]
        assert "inference_s" in job["detail"]["steps"] and "store_s" in job["detail"]["steps"]
        assert segs(node, ids) == 1

    pacs = start_storescp(tmp_path / "pacs", pacs_port, "-aet", PACS_AET)
    try:
        results = node.json(f"/ai/jobs/{first['id']}")["detail"]["results"]
        assert node.post(f"/ai/jobs/{first['id']}/retry").status_code == 200
        done = node.wait_for_run(first_ids.series_uid, timeout_s=RUN_TIMEOUT_S)
        assert done["state"] == "done", done["error"]
        assert done["detail"].get("reused_results") is True, "the model ran again"
        assert {s["state"] for s in done["destinations"]} == {"sent"}
        received = [pydicom.dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
        assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(results.values())
        assert segs(node, first_ids) == 1, "no second SEG in orthanc"
    finally:
        stop(pacs.process)


def test_cancel_during_delivery_stores_and_sends_nothing(
    node: Node, gate: Path, hold_store: Path, tmp_path: Path
) -> None:
    ids, job = push(node, tmp_path, seed=63)
    wait_for(lambda: delivering(gate, job["id"]), RUN_TIMEOUT_S, 0.1, "the delivery")
    response = node.post(f"/ai/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    hold_store.unlink()  # were the delivery alive anywhere, it would now store its results
    # The next job goes through the same delivery worker: once it is done, the cancelled
    # delivery had every chance to store.
    next_ids, _ = push(node, tmp_path, seed=64)
    assert node.wait_for_run(next_ids.series_uid, timeout_s=RUN_TIMEOUT_S)["state"] == "failed"
    assert segs(node, next_ids) == 1
    cancelled = node.json(f"/ai/jobs/{job['id']}")
    assert cancelled["state"] == "cancelled" and cancelled["outputs"] == []
    assert segs(node, ids) == 0, "a delivery cancelled stores nothing"


def test_deliveries_waiting_behind_held_ones_keep_their_lease(
    node: Node, gate: Path, hold_store: Path, tmp_path: Path
) -> None:
    """Both delivery processes held: a third delivery waits, reserved by the delivery worker,
    which reports it alive, so the node does not take it for lost and send it again."""
    pushed = [push(node, tmp_path, seed=seed) for seed in (65, 66, 67)]
    for _, job in pushed[:2]:
        wait_for(lambda job=job: delivering(gate, job["id"]), RUN_TIMEOUT_S, 0.1, "a delivery")
    waiting = pushed[2][1]["id"]
    wait_for(
        lambda: node.json(f"/ai/jobs/{waiting}")["detail"].get("delivery") == "waiting",
        RUN_TIMEOUT_S,
        0.2,
        "the waiting delivery's heartbeat",
    )
    assert delivering(gate, waiting) is None, "only two deliveries at once"
    hold_store.unlink()
    for ids, job in pushed:
        ended = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
        assert ended["state"] == "failed" and ended["error"].startswith("dicom:PACS: "), ended
        assert ended["attempts"] == 1, f"job {job['id']} was sent again"
        assert segs(node, ids) == 1


def test_a_delivery_process_killed_mid_way_comes_back_and_stores_once(
    node: Node, gate: Path, hold_store: Path, tmp_path: Path
) -> None:
    ids, job = push(node, tmp_path, seed=68)
    first = wait_for(lambda: delivering(gate, job["id"]), RUN_TIMEOUT_S, 0.1, "the delivery")
    os.kill(first["pid"], signal.SIGKILL)
    (gate / f"store-{first['pid']}.json").unlink()  # the killed process's marker
    again = wait_for(
        lambda: (found := delivering(gate, job["id"])) and found["pid"] != first["pid"] and found,
        RUN_TIMEOUT_S,
        0.1,
        "the delivery back in another process",
    )
    assert again["attempt"] == first["attempt"], "the same attempt, not a new run of the model"
    hold_store.unlink()
    done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert done["state"] == "failed" and done["error"].startswith("dicom:PACS: "), done
    assert done["attempts"] == 1
    assert [s["state"] for s in done["destinations"] if s["destination"]["kind"] == "orthanc"] == [
        "sent"
    ]
    assert segs(node, ids) == 1, "exactly one set of results"
