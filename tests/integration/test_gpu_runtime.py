"""A worker told it is a GPU worker (``worker_device: cuda``) on this machine without CUDA:
it keeps serving the other queues, refuses the GPU pool's, and says why in ``/ai/health``,
``ainode status`` and Celery's own view of its queues."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from nodeharness import Node, settings_env, start_node, wait_for

from ainode.broker import make_celery
from ainode.queues import every_queue_name
from ainode.worker_runtime import gpu_queues

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = start_node(
        tmp_path_factory.mktemp("gpu-runtime") / "node",
        interactive_enabled=False,
        worker_device="cuda",
    )
    yield started
    started.stop()


def _runtime(node: Node) -> dict[str, Any] | None:
    runtimes = node.json("/ai/health")["worker"].get("runtime") or {}
    measured = [
        r
        for name, r in runtimes.items()
        if r and r["device"] != "unknown" and name.startswith("worker@")  # not delivery@
    ]
    return measured[0] if measured else None


def test_gpu_worker_without_cuda_refuses_gpu_queues_and_says_why(node: Node) -> None:
    runtime = wait_for(lambda: _runtime(node), timeout_s=240, what="the worker's runtime report")
    expected = gpu_queues(every_queue_name())
    assert expected, "the default queues include the GPU pool's"
    assert runtime["device"] == "cpu"
    assert runtime["cuda_usable"] is False
    assert sorted(runtime["refused_queues"]) == sorted(expected)
    assert "worker_device is cuda" in runtime["refused_reason"]
    assert runtime["cuda_reason"] in runtime["refused_reason"]
    assert "CPUExecutionProvider" in runtime["onnx_providers"]
    assert runtime["torch_version"]

    # Celery's own view: the worker consumes the other queues and none of the GPU pool's.
    app = make_celery(node.settings)
    active = wait_for(
        lambda: app.control.inspect(timeout=2.0).active_queues(), timeout_s=120, what="queues"
    )
    consumed = {queue["name"] for queues in active.values() for queue in queues}
    assert "ainode.default" in consumed
    assert not consumed & set(expected), consumed


def test_status_shows_the_runtime_and_the_refusal(node: Node) -> None:
    wait_for(lambda: _runtime(node), timeout_s=240, what="the worker's runtime report")
    done = subprocess.run(
        [sys.executable, "-m", "ainode.cli", "status", "--json"],
        env=settings_env(node.settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    status = json.loads(done.stdout)
    detail = status["parts"]["worker"]["detail"]
    assert status["parts"]["worker"]["healthy"] is True
    assert "refuses ainode.gpu." in detail, detail
    assert re.search(r"ONNX \S*CPU", detail), detail
