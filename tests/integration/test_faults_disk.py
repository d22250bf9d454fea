"""The data directory's disk full: storing is refused clearly, reads go on, nothing is corrupted,
and once space is free again every series ends with exactly one job, done.

The data directory is a small tmpfs of the test's own, filled by a file of zeros until the
kernel says ENOSPC: a real full disk for every part that keeps state (Orthanc's storage and
index, the job store, Redis's append-only file), not a mock. Mounting needs CAP_SYS_ADMIN (root
in the test container); without it the test is skipped with that reason. The node's logs go to
the test's ordinary folder instead: what a part logs while the disk is full (a worker's last
words) is what a failure's post-mortem needs.

Redis refuses every write while it cannot write its append-only file (MISCONF); a worker
waiting for a job meets that refusal at its next BRPOP and used to die of it. The second test
makes Redis refuse writes on demand (NOREPLICAS: the same kind of refusal, a channel error to
the workers), so that path is checked every run, not only when the disk fills at that moment.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import redis
from nodeharness import ONNX_RULES, Node, start_node, wait_for, write_phantom, write_rules
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from ainode.phantoms import SeriesIds

pytestmark = [pytest.mark.integration, pytest.mark.fault]

TMPFS_SIZE = "160m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


class Filler:
    """Takes every free byte of a file system with one file, and gives them back."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "filler.bin"

    def fill(self) -> None:
        chunk = bytes(1 << 20)
        with self.path.open("ab", buffering=0) as out:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        out.write(chunk[:size])
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


def c_store_statuses(node: Node, paths: list[Path]) -> list[int | None]:
    """Each file's C-STORE status (None: no answer)."""
    ae = AE(ae_title="DISKFULL")
    ae.add_requested_context(CTImageStorage)
    association = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title="AINODE")
    assert association.is_established, "the node must still accept associations"
    statuses: list[int | None] = []
    try:
        for path in paths:
            answer = association.send_c_store(pydicom.dcmread(path))
            statuses.append(int(answer.Status) if "Status" in answer else None)
    finally:
        if association.is_established:
            association.release()
    return statuses


PARTS = ("redis", "orthanc", "worker", "delivery")


def assert_parts_alive(node: Node, pids: dict[str, int]) -> None:
    """Every part still runs as the same process (the test's node restarts nothing)."""
    dead = {name: node.service(name).returncode for name in pids if not node.service(name).running}
    assert not dead, f"parts died (exit codes): {dead}"
    assert {name: node.pid(name) for name in pids} == pids


def orthanc_series_id(node: Node, series_uid: str) -> str:
    answer = node.post("/tools/lookup", data=series_uid)
    answer.raise_for_status()
    (found,) = [hit["ID"] for hit in answer.json() if hit["Type"] == "Series"]
    return str(found)


def assert_done_once(node: Node, ids: SeriesIds) -> None:
    job = node.wait_for_run(ids.series_uid, timeout_s=90)
    assert job["state"] == "done", job["error"]
    assert len(node.runs(ids.series_uid)) == 1
    assert len(node.study_series(ids.study_uid, "SEG")) == 1


def test_full_data_disk_refuses_stores_keeps_serving_reads_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ONNX_RULES)
    (tmp_path / "logs").mkdir()
    (small_disk / "node").mkdir()
    (small_disk / "node" / "logs").symlink_to(tmp_path / "logs")
    node = start_node(
        small_disk / "node",
        routing_rules=rules,
        change_sweep_s=2.0,  # decisions that could not be recorded are found again soon
        dispatch_sweep_s=1.0,
        interactive_enabled=False,
    )
    filler = Filler(small_disk)
    try:
        before, ids_before = write_phantom(tmp_path / "before", 12, seed=51)
        node.storescu(before)
        assert_done_once(node, ids_before)
        pids = {name: node.pid(name) for name in PARTS}
        stored_before = node.count_instances()

        # 1. Full: C-STORE is refused with a failure status, reads still answer.
        filler.fill()
        refused, _ = write_phantom(tmp_path / "refused", 12, seed=52)
        statuses = c_store_statuses(node, refused)
        assert all(s is not None and s != 0 for s in statuses), statuses
        assert node.get("/ai/health").status_code == 200
        assert node.get("/ai/jobs").status_code == 200
        assert node.count_instances() == stored_before
        assert node.get(f"/instances/{node.json('/instances')[0]}/file").status_code == 200

        # 2. A series stored just before the disk fills: its decision, job and results
        # must wait for space, not be lost or half written.
        filler.free()
        racing, ids_racing = write_phantom(tmp_path / "racing", 12, seed=53)
        node.storescu(racing)
        filler.fill()
        racing_id = orthanc_series_id(node, ids_racing.series_uid)
        wait_for(
            lambda: bool(node.json(f"/series/{racing_id}").get("IsStable")),
            120,
            0.5,
            "Orthanc to call the racing series stable while the disk is full",
        )
        # Three change sweeps' worth of a full disk after that: routing the series (whether
        # or not its decision can be recorded now) happens before or after the space returns,
        # and either way it must end with one job, done.
        time.sleep(6)
        assert node.get("/ai/health").status_code == 200
        filler.free()

        # 3. Space again: everything completes exactly once; nothing is corrupted.
        assert_done_once(node, ids_racing)
        after, ids_after = write_phantom(tmp_path / "after", 12, seed=54)
        node.storescu(after)
        assert_done_once(node, ids_after)
        assert_parts_alive(node, pids)
        with sqlite3.connect(small_disk / "node" / "ai-jobs.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        # 4. Routing told each run of failures once with its traceback (not every sweep),
        # and that it works again.
        logs = tmp_path / "logs"
        if routing_log_counts(logs)[0]:
            wait_for(
                lambda: routing_log_counts(logs)[0] == routing_log_counts(logs)[1],
                60,
                0.5,
                "routing to say it works again after each run of failures",
            )
    finally:
        filler.free()
        node.stop()


def routing_log_counts(logs: Path) -> tuple[int, int]:
    """(runs of routing failures begun, runs ended) in the node's logs."""
    text = "\n".join(path.read_text(errors="replace") for path in logs.glob("*.log"))
    return text.count("failed; the change sweep will try again"), text.count(
        "routing: working again"
    )


def refusals(broker: redis.Redis) -> tuple[int, int]:
    """How many BRPOPs (a worker waiting for its next job), and commands in all, Redis refused
    for want of a replica so far."""
    brpop = broker.info("commandstats").get("cmdstat_brpop", {})
    refused = broker.info("errorstats").get("errorstat_NOREPLICAS", {})
    return int(brpop.get("rejected_calls", 0)), int(refused.get("count", 0))


def test_workers_outlive_redis_refusing_writes_and_run_the_next_job(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ONNX_RULES)
    node = start_node(tmp_path / "node", routing_rules=rules, interactive_enabled=False)
    try:
        broker = redis.Redis(port=node.settings.redis_port)
        pids = {name: node.pid(name) for name in PARTS}
        brpops_before, refused_before = refusals(broker)

        def refused_or_dead() -> bool:
            """Both workers' waits for a job refused and their reconnections too, or a death."""
            brpops, refused = refusals(broker)
            dead = not all(node.service(name).running for name in pids)
            return dead or (brpops >= brpops_before + 2 and refused >= refused_before + 10)

        broker.config_set("min-replicas-to-write", 1)  # no replica: every write is refused
        try:
            wait_for(refused_or_dead, 120, 0.2, "the workers to meet Redis's refusal")
        finally:
            broker.config_set("min-replicas-to-write", 0)
        assert_parts_alive(node, pids)

        paths, ids = write_phantom(tmp_path / "after", 12, seed=55)
        node.storescu(paths)
        assert_done_once(node, ids)
        assert_parts_alive(node, pids)
    finally:
        node.stop()
