"""``ainode bench``: run the benchmarks in ``bench/`` and write one Markdown table of their figures.

Each benchmark is a standalone script that prints its own detailed tables. When the variable
``AINODE_BENCH_JSON`` names a file, the script also appends its headline figures to it, one JSON
object a line, through :func:`record`; the runner reads those back, so it never parses a
script's text. A figure with a baseline (measured side by side in the same run) gets the ratio
value / baseline.

This module is imported by the scripts, so it stays light: standard library and pydantic only.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel

from ainode.settings import REPO_ROOT

FIGURES_ENV = "AINODE_BENCH_JSON"
BENCH_DIR = REPO_ROOT / "bench"


class Figure(BaseModel):
    """One measured number; ``baseline`` is the reference measured in the same run, if any."""

    benchmark: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


def record(
    benchmark: str,
    metric: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    note: str = "",
) -> None:
    """Append one figure to the file named by ``AINODE_BENCH_JSON``; nothing when it is unset."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    figure = Figure(
        benchmark=benchmark, metric=metric, value=value, unit=unit, baseline=baseline, note=note
    )
    with Path(path).open("a") as out:
        out.write(figure.model_dump_json() + "\n")


@dataclass(frozen=True)
class Benchmark:
    """A script of ``bench/`` and its arguments for a quick run and for the real sizes."""

    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()
    what: str = ""


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "ingest",
        "bench_ingest.py",
        ("--slices", "60"),
        what="C-STORE and STOW-RS into the node vs Orthanc's defaults",
    ),
    Benchmark(
        "routing",
        "bench_routing.py",
        ("--rounds", "1"),
        what="ingest cost of the plugin; delay from the last instance to the job",
    ),
    Benchmark(
        "inference",
        "bench_inference.py",
        ("--quick",),
        what="a node job's worker time vs bare nnU-Net on the same voxels",
    ),
    Benchmark(
        "export",
        "bench_export.py",
        ("--slices", "60", "--size", "256", "--labels", "5"),
        what="BINARY SEG vs LABELMAP SEG vs RTSTRUCT",
    ),
    Benchmark(
        "interactive",
        "bench_interactive.py",
        ("--quick", "--models", "regiongrow"),
        what="click latency over HTTP: first click (cold) vs next click",
    ),
    Benchmark(
        "delivery",
        "bench_delivery.py",
        ("--series", "3"),
        ("--series", "8"),
        what="inference throughput with a PACS taking 1 instance/s vs a fast one",
    ),
)


@dataclass
class BenchRun:
    benchmark: Benchmark
    figures: list[Figure]
    seconds: float
    returncode: int
    output: str


def run_benchmark(bench: Benchmark, *, full: bool, timeout_s: float) -> BenchRun:
    """Run one script in its own process; its figures come back through the JSON-lines file."""
    args = bench.full if full else bench.quick
    with tempfile.TemporaryDirectory(prefix="ainode-bench-") as tmp:
        figures_file = Path(tmp) / "figures.jsonl"
        env = {**os.environ, FIGURES_ENV: str(figures_file)}
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, str(BENCH_DIR / bench.script), *args],
                env=env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as error:
            returncode = 124
            output = _text(error.stdout) + _text(error.stderr) + f"\ntimed out after {timeout_s} s"
        seconds = time.monotonic() - started
        lines = figures_file.read_text().splitlines() if figures_file.exists() else []
    figures = [Figure.model_validate_json(line) for line in lines if line.strip()]
    return BenchRun(bench, figures, seconds, returncode, output)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def describe_machine(load_at_start: tuple[float, float, float] | None = None) -> dict[str, str]:
    """What the figures were measured on: CPU, cores, memory, GPU, load and versions.

    The load averages tell a reader whether other work shared the machine during the run.
    """
    loads = {"load average (1, 5, 15 min) at the end": _load(os.getloadavg())}
    if load_at_start is not None:
        loads = {"load average (1, 5, 15 min) at the start": _load(load_at_start), **loads}
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count() or "?"),
        "memory": _memory(),
        "GPU": _gpus(),
        **loads,
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": platform.python_version(),
        "Orthanc": _orthanc_version(),
        "torch": _package_version("torch"),
        "onnxruntime": _package_version("onnxruntime"),
        "nnunetv2": _package_version("nnunetv2"),
        "ainode": _package_version("ainode"),
    }


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.1f}" for v in load)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def _memory() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return "unknown"
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return f"{int(match.group(1)) / 2**20:.1f} GiB" if match else "unknown"


def _gpus() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none (no nvidia-smi); benchmarks ran on the CPU"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as error:
        return f"nvidia-smi failed: {type(error).__name__}"
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    return "; ".join(gpus) or "none"


def _orthanc_version() -> str:
    try:
        out = subprocess.run(
            ["/usr/sbin/Orthanc", "--version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return "not installed"
    first = out.splitlines()[0] if out else ""
    return first.split()[-1] if first else "unknown"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def render_markdown(runs: Sequence[BenchRun], machine: dict[str, str], *, full: bool) -> str:
    """The report: how it was run, the machine, one table of every figure, failures."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"`ainode bench{' --full' if full else ''}` on {when}; "
        f"{'real sizes' if full else 'quick settings (`--full` for the real sizes)'}. "
        "Ratio = value / baseline, both measured side by side in the same run.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine.items()),
        "",
        "## Figures",
        "",
        "| benchmark | metric | value | baseline | ratio |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        for f in run.figures:
            baseline = "" if f.baseline is None else f"{_number(f.baseline)} {f.unit}"
            ratio = "" if f.ratio is None else f"{f.ratio:.2f}x"
            metric = f"{f.metric} ({f.note})" if f.note else f.metric
            lines.append(
                f"| {f.benchmark} | {metric} | {_number(f.value)} {f.unit} | {baseline} | {ratio} |"
            )
    lines += [
        "",
        "## Runs",
        "",
        "| benchmark | what | arguments | seconds | result |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        args = " ".join(run.benchmark.full if full else run.benchmark.quick) or "(defaults)"
        result = "ok" if run.returncode == 0 and run.figures else _failure(run)
        lines.append(
            f"| {run.benchmark.name} | {run.benchmark.what} | `{args}` | {run.seconds:.0f} "
            f"| {result} |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if value != value:  # NaN: a step that did not happen
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _failure(run: BenchRun) -> str:
    last = [line for line in run.output.splitlines() if line.strip()][-1:] or ["no output"]
    what = "no figures" if run.returncode == 0 else f"failed (exit {run.returncode})"
    return f"{what}: {last[0].strip()[:160].replace('|', '/')}"


def run_benchmarks(
    names: Sequence[str] | None, *, full: bool, timeout_s: float, progress: bool = True
) -> tuple[str, bool]:
    """Run the named benchmarks (all by default); the Markdown report and whether all passed."""
    chosen = [b for b in BENCHMARKS if not names or b.name in names]
    load_at_start = os.getloadavg()
    runs = []
    for bench in chosen:
        if progress:
            sys.stderr.write(f"ainode bench: {bench.name} ...\n")
            sys.stderr.flush()
        runs.append(run_benchmark(bench, full=full, timeout_s=timeout_s))
    report = render_markdown(runs, describe_machine(load_at_start), full=full)
    return report, all(r.returncode == 0 and r.figures for r in runs)
