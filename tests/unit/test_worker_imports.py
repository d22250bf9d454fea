"""The delivery worker loads the worker's tasks without torch (1.3 s of CPU at every start, and
its memory in every pool process); torch is loaded where a model runs."""

from __future__ import annotations

import subprocess
import sys

LOADED = """
import sys
import ainode_worker.tasks
print("torch" in sys.modules)
from ainode_worker.jobrunner import WorkerContext
from ainode.settings import Settings
WorkerContext.from_settings(Settings(), hostname="delivery@test")
print("torch" in sys.modules)
"""


def test_the_tasks_and_a_worker_context_load_without_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOADED], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.split() == ["False", "False"], done.stdout + done.stderr
