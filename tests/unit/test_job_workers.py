"""Health counts only workers that run jobs: a node whose only live worker delivers results is
not healthy (worker_runtime.job_workers, used by /ai/health and ``ainode status``)."""

from __future__ import annotations

from ainode.queues import DELIVERY_QUEUE, all_queue_names, is_delivery_queue
from ainode.worker_runtime import WorkerRuntime, job_workers


def runtime(queues: list[str]) -> WorkerRuntime:
    return WorkerRuntime.model_validate({"device": "cpu", "queues": queues})


def test_delivery_queues_are_the_nodes_and_each_machines_own() -> None:
    assert is_delivery_queue(DELIVERY_QUEUE)
    assert is_delivery_queue(f"{DELIVERY_QUEUE}.gpu-host-2")
    assert not any(is_delivery_queue(q) for q in all_queue_names("cpu"))
    assert not is_delivery_queue(f"{DELIVERY_QUEUE}x")


def test_only_workers_serving_job_queues_count() -> None:
    runtimes = {
        "delivery@node": runtime([DELIVERY_QUEUE]),
        "worker@remote-delivery": runtime([f"{DELIVERY_QUEUE}.remote"]),
        "worker@starting": runtime([]),  # queues not reported yet: counted
        "worker@old": None,  # cannot tell: counted
        "worker@node": runtime(all_queue_names()),
    }
    assert job_workers(runtimes) == ["worker@starting", "worker@old", "worker@node"]
    assert job_workers({"delivery@node": runtime([DELIVERY_QUEUE])}) == []
