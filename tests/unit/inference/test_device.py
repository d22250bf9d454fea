"""GPU resource rules on a machine without a GPU: CPU fallback, the free-memory wait (with an
injected probe), one job per GPU slot (real file locks, real processes), the model cache's
time-to-live (real models)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ainode_worker.inference.device import DevicePolicy, GpuInfo, cuda_probe
from ainode_worker.inference.errors import GpuMemoryError
from ainode_worker.inference.pipeline import BackendCache, cache_from_settings, run_pipeline
from ainode_worker.volume import Volume

from ainode.phantoms import Phantom
from ainode.registry import Registry
from ainode.settings import Settings

CUDA = torch.device("cuda")  # a device name only: nothing here touches a GPU


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def probe_of(free: list[int], total: int = 8000) -> tuple[list[int], Callable[[], GpuInfo]]:
    """A probe answering each free figure in turn (the last one from then on)."""
    calls: list[int] = []

    def probe() -> GpuInfo:
        value = free[min(len(calls), len(free) - 1)]
        calls.append(value)
        return GpuInfo(uuid="GPU-test-0", free_mb=value, total_mb=total)

    return calls, probe


def test_models_run_on_the_gpu_if_there_is_one_else_on_the_cpu(
    registry: Registry, tmp_path: Path, phantom: tuple[Phantom, Volume]
) -> None:
    # Real torch, no probe injected: on this CPU machine, the fallback.
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert (cuda_probe() is not None) == torch.cuda.is_available()
    cache = cache_from_settings(Settings(data_dir=tmp_path))
    assert cache.devices.device() == expected
    # demo-phantom asks for 500 MB of GPU memory; without a GPU it runs on the CPU, unasked.
    assert registry.get("demo-phantom").min_gpu_memory_mb > 0
    result = run_pipeline(registry, "demo-phantom", {"main": phantom[1]}, {}, cache=cache)
    assert cache.loaded() == [("demo-phantom", expected)]
    assert ("gpu_wait_s" in result.timings) == (expected.type == "cuda")
    assert result.labels.any()


def test_a_probe_with_a_gpu_selects_cuda() -> None:
    _, probe = probe_of([4000])
    assert DevicePolicy(probe=probe).device() == CUDA
    assert DevicePolicy(probe=lambda: None).device() == torch.device("cpu")


def test_the_memory_wait_returns_once_enough_is_free() -> None:
    clock = FakeClock()
    calls, probe = probe_of([100, 300, 900])
    policy = DevicePolicy(memory_wait_s=60, poll_s=2, probe=probe, clock=clock, sleep=clock.sleep)
    policy.wait_for_memory(500, "demo")
    assert calls == [100, 300, 900]
    assert clock.sleeps == [2, 2]


def test_the_memory_wait_gives_up_with_the_reason() -> None:
    clock = FakeClock()
    _, probe = probe_of([100])
    policy = DevicePolicy(memory_wait_s=5, poll_s=2, probe=probe, clock=clock, sleep=clock.sleep)
    with pytest.raises(GpuMemoryError, match=r"needs 500 MB .* only 100 MB free after waiting 5 s"):
        policy.wait_for_memory(500, "demo")
    assert clock.now == 5 and clock.sleeps == [2, 2, 1]  # never waits past the deadline


def test_no_wait_without_a_gpu() -> None:
    clock = FakeClock()
    DevicePolicy(probe=lambda: None, clock=clock, sleep=clock.sleep).wait_for_memory(10**6, "x")
    assert clock.sleeps == []


_HOLDER = """
import sys, time, torch
from pathlib import Path
from ainode_worker.inference.device import DevicePolicy, GpuInfo
policy = DevicePolicy(lock_dir=Path(sys.argv[1]), probe=lambda: GpuInfo("GPU-test-0", 1, 1))
with policy.gpu_slot(torch.device("cuda")):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[3]).write_text("done")  # still holding the slot
"""


def test_one_gpu_job_at_a_time_across_processes(tmp_path: Path) -> None:
    _, probe = probe_of([4000])
    policy = DevicePolicy(lock_dir=tmp_path / "locks", probe=probe)
    marker = tmp_path / "holder-done"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "locks"), "1.0", str(marker)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with policy.gpu_slot(CUDA):
            # The slot is ours only once the other process has finished with it.
            assert marker.read_text() == "done"
    finally:
        holder.kill()
        holder.wait()
    with policy.gpu_slot(torch.device("cpu")):  # the CPU has no slots to wait for
        pass


def test_two_slots_let_two_jobs_share_a_gpu_and_stop_the_third(tmp_path: Path) -> None:
    _, probe = probe_of([4000])
    policy = DevicePolicy(jobs_per_gpu=2, lock_dir=tmp_path, probe=probe)
    inside: list[str] = []
    release = threading.Event()

    def job(name: str) -> None:
        with policy.gpu_slot(CUDA):
            inside.append(name)
            release.wait(10)

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(inside) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(inside) == 2  # the third waits for a slot
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(inside) == ["a", "b", "c"]


def test_a_model_unused_for_the_ttl_is_unloaded_and_loaded_again(
    registry: Registry, tmp_path: Path, phantom: tuple[Phantom, Volume]
) -> None:
    clock = FakeClock()
    cache = BackendCache(tmp_path, ttl_s=60, clock=clock, sweep=False)
    first = run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {}, cache=cache)
    assert any(k.endswith(".load_s") for k in first.timings)
    clock.now += 59
    again = run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {}, cache=cache)
    assert not any(k.endswith(".load_s") for k in again.timings)  # used: its TTL restarts
    clock.now += 59
    assert cache.evict_expired() == []
    clock.now += 2
    assert cache.evict_expired() == ["demo-phantom-onnx"]
    assert cache.loaded() == []
    reloaded = run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {}, cache=cache)
    assert any(k.endswith(".load_s") for k in reloaded.timings)


def test_a_model_in_use_is_not_evicted(registry: Registry, tmp_path: Path) -> None:
    clock = FakeClock()
    cache = BackendCache(tmp_path, ttl_s=1, clock=clock, sweep=False)
    spec = registry.get("demo-onnx")
    resolved = spec.model_copy(update={"weights": str(registry.weights_path(spec))})
    with cache.use(resolved, torch.device("cpu")) as (_, loaded):
        assert loaded
        clock.now += 100
        assert cache.evict_expired() == []  # a long prediction keeps its model
    clock.now += 0.5
    assert cache.evict_expired() == []  # idle time counts from the end of the use
    clock.now += 1
    assert cache.evict_expired() == ["demo-phantom-onnx"]


def test_an_idle_worker_unloads_models_by_itself(registry: Registry, tmp_path: Path) -> None:
    cache = BackendCache(tmp_path, ttl_s=0.2)
    spec = registry.get("demo-onnx")
    resolved = spec.model_copy(update={"weights": str(registry.weights_path(spec))})
    cache.get(resolved, torch.device("cpu"))
    deadline = time.monotonic() + 10
    while cache.loaded() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.loaded() == []  # the background sweep, with no further use of the cache
