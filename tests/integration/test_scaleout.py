"""Scale-out: a second worker, started with ``ainode worker`` as on another machine, shares a node.

The node's own worker serves the GPU pool's queues (``ainode.gpu.*``); the second worker, with a
data directory of its own, reaches the node only through the settings a remote machine would
use (``redis_url``, ``orthanc_url``, ``orthanc_username``/``orthanc_password``, auth on) and
serves the CPU pool's (``ainode.cpu.*``). Its results are delivered by ``ainode worker
--delivery`` beside it, on that machine's own delivery queue (they are in its data
directory). Rules send CHEST series to ``pool: gpu`` and ABDOMEN series to ``pool: cpu``.
Every job must run exactly once, on a worker of its pool.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from nodeharness import Node, start_node, write_rules

from ainode.broker import make_celery, ping_workers
from ainode.credentials import read_credentials
from ainode.node.processes import ManagedProcess
from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series
from ainode.queues import all_queue_names
from ainode.settings import REPO_ROOT, Settings

POOL_RULES = """\
version: 1
mode: first-match
rules:
  - name: chest-on-gpu
    when: {Modality: CT, BodyPartExamined: CHEST}
    pipeline: demo-phantom-onnx
    outputs: [SEG]
    destinations: [orthanc]
    pool: gpu
  - name: abdomen-on-cpu
    when: {Modality: CT, BodyPartExamined: ABDOMEN}
    pipeline: demo-phantom-onnx
    outputs: [SEG]
    destinations: [orthanc]
    pool: cpu
"""
SERIES_PER_POOL = 3
CPU_WORKER = "cpu-pool-1"
CPU_DELIVERY = "cpu-pool-1-delivery"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("scaleout")
    started = start_node(
        folder / "node",
        auth_enabled=True,
        interactive_enabled=False,
        routing_rules=write_rules(folder / "rules.yaml", POOL_RULES),
        worker_queues=all_queue_names("gpu"),
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cpu_worker(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """``ainode worker --pool cpu`` with only what a second machine would be given."""
    folder = tmp_path_factory.mktemp("cpu-worker")
    user, password = read_credentials(node.settings.credentials_file)
    remote = Settings(
        data_dir=folder / "data",
        redis_url=node.settings.broker_url,
        orthanc_url=node.url,
        orthanc_username=user,
        orthanc_password=password,
        routing_rules=node.settings.routing_rules,
        worker_enabled=True,
        interactive_enabled=False,
        delivery_queue=f"ainode.cpu.delivery.{CPU_WORKER}",
    )
    settings_file = folder / "settings.json"
    settings_file.write_text(remote.model_dump_json())

    def process(name: str, *args: str) -> ManagedProcess:
        pinged = f"worker@{name}"
        return ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", "ainode.cli", "worker", *args, "--name", name],
            log_file=folder / f"{name}.log",
            probe=lambda: None if pinged in ping_workers(make_celery(remote), 0.5) else "no ping",
            env={"AINODE_SETTINGS": str(settings_file)},
            cwd=REPO_ROOT,
            start_timeout_s=120.0,
        )

    worker = process(CPU_WORKER, "--pool", "cpu")
    delivery = process(CPU_DELIVERY, "--delivery")
    try:
        for part in (worker, delivery):
            part.start()
            part.wait_ready()
        yield worker
    finally:
        worker.stop()
        delivery.stop()


def _series(folder: Path, body_part: str, seed: int) -> tuple[list[Path], str]:
    ids = replace(SeriesIds(), body_part=body_part)
    geometry = Geometry(shape=(12, 32, 32), spacing=(3.0, 3.0, 3.0))
    return write_series(make_phantom(geometry, seed=seed), folder, ids), ids.series_uid


def test_jobs_run_once_each_on_a_worker_of_their_pool(
    node: Node, cpu_worker: ManagedProcess, tmp_path: Path
) -> None:
    node_name = f"{node.settings.node_name}-{node.settings.http_port}"
    gpu_worker = f"worker@{node_name}"
    delivered_by = {
        gpu_worker: f"delivery@{node_name}",
        f"worker@{CPU_WORKER}": f"worker@{CPU_DELIVERY}",
    }
    assert set(node.json("/ai/health")["worker"]["workers"]) == {
        *delivered_by,
        *delivered_by.values(),
    }

    pools: dict[str, str] = {}
    for index in range(SERIES_PER_POOL):
        for body_part, pool in (("CHEST", "gpu"), ("ABDOMEN", "cpu")):
            paths, uid = _series(tmp_path / f"{body_part}{index}", body_part, seed=index)
            node.storescu(paths)
            pools[uid] = pool
    jobs = {uid: node.wait_for_run(uid, timeout_s=240) for uid in pools}

    logs = {
        gpu_worker: (node.settings.logs_dir / "worker.log").read_text(),
        f"worker@{CPU_WORKER}": cpu_worker.log_file.read_text(),
    }
    ran_on: dict[str, list[str]] = {}
    for uid, job in jobs.items():
        pool = pools[uid]
        expected = gpu_worker if pool == "gpu" else f"worker@{CPU_WORKER}"
        assert job["state"] == "done", job
        assert job["queue"] == f"ainode.{pool}.default", job
        assert job["worker"] == expected, job
        assert job["attempts"] == 1, job
        # Exactly one run, in the expected worker's log and in no other; delivered beside it.
        runs = {name: text.count(f"job {job['id']} results written") for name, text in logs.items()}
        assert runs == {name: int(name == expected) for name in logs}, runs
        assert job["detail"]["delivered_by"] == delivered_by[expected], job["detail"]
        ran_on.setdefault(expected, []).append(job["id"])
    assert {len(ids) for ids in ran_on.values()} == {SERIES_PER_POOL}
    assert len(ran_on) == 2  # both workers did work

    # The remote worker's credentials came from its settings and stay out of its log.
    _, password = read_credentials(node.settings.credentials_file)
    assert password not in logs[f"worker@{CPU_WORKER}"]
    assert (
        "queues ainode.cpu.high,ainode.cpu.default,ainode.cpu.low" in logs[f"worker@{CPU_WORKER}"]
    )
