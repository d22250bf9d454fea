"""The worker killed, cancelled and cut off mid-job: cancel stops, retry runs, a dead worker's
job comes back, and every study ends with exactly one set of results.

Jobs are held by the test gate (``job_test_gate_dir``, tests/jobgate.py): while
``<gate>/hold-<step>`` exists, the worker waits in that step (inference, store), after writing
``<step>-<pid>.json`` with the job and attempt it holds. The test decides when inference may go
on; nothing depends on how fast the machine is. One supervised node for the module (parts that
die are restarted), with a short lease (heartbeat 2 s, deadline 10 s; the defaults are 5 s and
30 s) and a quick sweep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from jobgate import held, holding, release_all
from nodeharness import (
    ONNX_RULES,
    Node,
    settings_env,
    start_node,
    wait_for,
    write_phantom,
    write_rules,
)

from ainode.phantoms import SeriesIds

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RUN_TIMEOUT_S = 240.0
LEASE_LIMIT_S = 60.0  # no job may stay running this long without a live worker holding it
# A dead worker's job comes back after the deadline: three kills cost 3 deadlines, not 90 s.
SHORT_LEASE = {"job_heartbeat_s": 2.0, "job_running_deadline_s": 10.0}


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, gate: Path) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("worker-faults")
    started = start_node(
        folder / "node",
        supervised=True,
        routing_rules=write_rules(folder / "rules.yaml", ONNX_RULES),
        dispatch_sweep_s=1.0,
        job_max_attempts=5,
        job_test_gate_dir=gate,
        **SHORT_LEASE,
    )
    yield started
    release_all(gate)
    started.stop()


@pytest.fixture
def hold(gate: Path) -> Iterator[Path]:
    """Inference waits while this fixture is active (or until the test removes the file)."""
    yield from holding(gate, "inference")


@pytest.fixture
def hold_store(gate: Path) -> Iterator[Path]:
    """Storing the results waits while this fixture is active (or until the test removes it)."""
    yield from holding(gate, "store")


def ended(pid: int) -> bool:
    """The process has exited (a zombie its parent has not reaped yet counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def push(node: Node, tmp_path: Path, seed: int) -> tuple[SeriesIds, dict[str, Any]]:
    paths, ids = write_phantom(tmp_path / f"ct{seed}", 20, seed=seed)
    node.storescu(paths)
    return ids, node.wait_for_decision(ids.series_uid, timeout_s=60)


def results(node: Node, ids: SeriesIds) -> tuple[int, int]:
    return len(node.study_series(ids.study_uid, "SEG")), len(
        node.study_series(ids.study_uid, "RTSTRUCT")
    )


def test_worker_killed_mid_inference_three_times_then_the_job_runs_once(
    node: Node, gate: Path, hold: Path, tmp_path: Path
) -> None:
    ids, job = push(node, tmp_path, seed=41)
    seen: set[str] = set()
    back_after: list[float] = []
    for _ in range(3):
        attempt = wait_for(
            lambda: held(gate, job["id"], seen), RUN_TIMEOUT_S, 0.1, "an attempt mid-inference"
        )
        seen.add(attempt["attempt"])
        pool_process = int(attempt["pid"])
        worker = node.pid("worker")
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        # The pool process must not go on with the superseded attempt.
        wait_for(partial(ended, pool_process), 30, 0.1, "the pool process to end")
        # The job comes back as a new attempt once the lease has expired.
        wait_for(
            lambda: node.json(f"/ai/jobs/{job['id']}")["attempt_id"] not in seen,
            LEASE_LIMIT_S,
            0.2,
            "the job sent again as a new attempt",
        )
        back_after.append(time.monotonic() - killed_at)
    wait_for(lambda: held(gate, job["id"], seen), RUN_TIMEOUT_S, 0.1, "the fourth attempt")
    hold.unlink()
    done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert done["state"] == "done", done["error"]
    assert done["attempts"] == 4
    assert results(node, ids) == (1, 1), "exactly one set of results"
    assert [d["state"] for d in done["destinations"]] == ["sent"]
    print(f"job back after SIGKILL of the worker: {[round(s, 1) for s in back_after]} s")


def test_cancel_stops_the_running_attempt_and_retry_runs_a_new_one(
    node: Node, gate: Path, hold: Path, tmp_path: Path
) -> None:
    ids, job = push(node, tmp_path, seed=42)
    attempt = wait_for(lambda: held(gate, job["id"], set()), RUN_TIMEOUT_S, 0.1, "inference")
    worker = node.pid("worker")
    cancelled_at = time.monotonic()
    response = node.post(f"/ai/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    # The attempt's process is terminated mid-inference: it cannot store anything later.
    wait_for(partial(ended, attempt["pid"]), 60, 0.05, "the cancelled attempt to stop")
    print(f"cancel to the attempt's process ended: {time.monotonic() - cancelled_at:.2f} s")
    assert node.pid("worker") == worker, "the worker itself goes on"
    hold.unlink()  # were the attempt alive anywhere, it would now go on and store its results
    cancelled = node.json(f"/ai/jobs/{job['id']}")
    assert cancelled["state"] == "cancelled" and cancelled["outputs"] == []
    assert [d["state"] for d in cancelled["destinations"]] == ["cancelled"]
    # Retry is a new attempt (a new Celery task) that no revoke touches: it runs.
    retry = node.post(f"/ai/jobs/{job['id']}/retry")
    assert retry.status_code == 200, retry.text
    done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert done["state"] == "done", done["error"]
    assert done["attempt_id"] != attempt["attempt"]
    assert results(node, ids) == (1, 1)
    counts = node.json("/ai/jobs")["counts"]
    metrics = node.get("/ai/metrics").text
    assert counts["queued"] == 0 and counts["running"] == 0
    assert re.search(r'^ainode_jobs\{state="queued"\} 0(\.0)?$', metrics, re.M), "metrics agree"


def test_a_job_cancelled_while_queued_is_not_run_and_its_retry_is(
    node: Node, gate: Path, hold: Path, tmp_path: Path
) -> None:
    first, running = push(node, tmp_path, seed=43)  # holds the only worker process
    wait_for(lambda: held(gate, running["id"], set()), RUN_TIMEOUT_S, 0.1, "the first job")
    ids, waiting = push(node, tmp_path, seed=44)
    assert node.post(f"/ai/jobs/{waiting['id']}/cancel").status_code == 200
    hold.unlink()
    assert node.wait_for_run(first.series_uid, timeout_s=RUN_TIMEOUT_S)["state"] == "done"
    assert node.json(f"/ai/jobs/{waiting['id']}")["state"] == "cancelled"
    assert results(node, ids) == (0, 0), "a cancelled job stores nothing"
    assert node.post(f"/ai/jobs/{waiting['id']}/retry").status_code == 200
    done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert done["state"] == "done", done["error"]
    assert results(node, ids) == (1, 1)


def test_a_cancel_the_broker_cannot_carry_still_ends_the_attempt(tmp_path: Path) -> None:
    """Redis is down when the job is cancelled: no revoke reaches the worker, and the
    attempt's heartbeat, which goes to Orthanc, learns of the cancel and ends its process."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold-inference").touch()
    node = start_node(
        tmp_path / "node",
        routing_rules=write_rules(tmp_path / "rules.yaml", ONNX_RULES),
        dispatch_sweep_s=1.0,
        job_test_gate_dir=gate,
        **SHORT_LEASE,
    )
    try:
        ids, job = push(node, tmp_path, seed=48)
        attempt = wait_for(lambda: held(gate, job["id"], set()), RUN_TIMEOUT_S, 0.1, "inference")
        redis_part = node.service("redis")
        os.kill(node.pid("redis"), signal.SIGKILL)
        redis_part.process.wait(10)  # type: ignore[union-attr]
        cancelled_at = time.monotonic()
        response = node.post(f"/ai/jobs/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        wait_for(partial(ended, attempt["pid"]), 120, 0.1, "the cancelled attempt to stop")
        print(
            f"cancel without a broker to the attempt ended: {time.monotonic() - cancelled_at:.1f} s"
        )
        (gate / "hold-inference").unlink()
        redis_part.start()
        redis_part.wait_ready()
        assert node.json(f"/ai/jobs/{job['id']}")["state"] == "cancelled"
        assert node.post(f"/ai/jobs/{job['id']}/retry").status_code == 200
        done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
        assert done["state"] == "done", done["error"]
        assert done["attempts"] == 2
        assert results(node, ids) == (1, 1), "exactly one set of results"
    finally:
        node.stop()


def restarted(node: Node, part: str, killed: int) -> bool:
    """The supervisor has started ``part`` again after ``killed`` was killed."""
    try:
        return node.pid(part) != killed and node.json("/ai/health")["broker"]["healthy"]
    except (KeyError, requests.RequestException):
        return False


def test_redis_killed_mid_inference_the_job_ends_done_once(
    node: Node, gate: Path, hold: Path, tmp_path: Path
) -> None:
    ids, job = push(node, tmp_path, seed=45)
    wait_for(lambda: held(gate, job["id"], set()), RUN_TIMEOUT_S, 0.1, "inference")
    broker = node.pid("redis")
    os.kill(broker, signal.SIGKILL)
    wait_for(lambda: restarted(node, "redis", broker), 120, 0.2, "Redis started again")
    hold.unlink()
    done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert done["state"] == "done", done["error"]
    assert results(node, ids) == (1, 1)
    assert node.json("/ai/jobs")["counts"]["running"] == 0


def test_orthanc_killed_with_results_about_to_be_stored_they_are_stored_once(
    node: Node, gate: Path, hold_store: Path, tmp_path: Path
) -> None:
    ids, job = push(node, tmp_path, seed=46)
    wait_for(lambda: held(gate, job["id"], set(), "store"), RUN_TIMEOUT_S, 0.1, "the store step")
    orthanc = node.pid("orthanc")
    os.kill(orthanc, signal.SIGKILL)
    wait_for(lambda: restarted(node, "orthanc", orthanc), 120, 0.2, "Orthanc started again")
    hold_store.unlink()
    done = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert done["state"] == "done", done["error"]
    assert results(node, ids) == (1, 1), "exactly one set of results"
    assert [d["state"] for d in done["destinations"]] == ["sent"]


def test_a_failed_job_closes_its_destinations_and_the_worker_warns_with_the_reason(
    node: Node, tmp_path: Path
) -> None:
    paths, ids = write_phantom(tmp_path / "gap", 20, seed=47)
    node.storescu(paths[:9] + paths[10:])  # a slice missing in the middle: refused
    job = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert job["state"] == "failed" and job["error"], job
    assert [d["state"] for d in job["destinations"]] == ["failed"], "no destination pending"
    log = node.settings.logs_dir / "worker.log"
    line = wait_for(
        lambda: next(
            (
                text
                for text in log.read_text(errors="replace").splitlines()
                if f"job {job['id']} failed" in text
            ),
            None,
        ),
        30,
        0.2,
        "the worker's warning",
    )
    assert " WARNING " in line and job["error"] in line, line
    text = log.read_text(errors="replace")
    assert ids.patient_name not in text and ids.patient_id not in text


def test_ainode_jobs_ends_quietly_on_a_closed_pipe(node: Node) -> None:
    # As `ainode jobs | head -1` once head has exited: the reading end is closed before the
    # command writes anything, so its first write meets a closed pipe whatever the timing.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "ainode.cli", "jobs"],
            env=settings_env(node.settings),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "BrokenPipeError" not in finished.stderr and "Traceback" not in finished.stderr
    assert finished.returncode == 0, finished.stderr
