"""``ainode bench`` runs a real benchmark script and writes its figures as one Markdown table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

AINODE = [sys.executable, "-m", "ainode.cli"]


def test_bench_writes_the_table_of_one_cheap_benchmark(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [*AINODE, "bench", "--only", "export", "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = output.read_text()
    assert report == result.stdout
    assert "| benchmark | metric | value | baseline | ratio |" in report
    figures = report.split("## Figures")[1].split("## Runs")[0]
    rows = [line for line in figures.splitlines() if line.startswith("| export |")]
    # Build+save time and file size for each of the three outputs, BINARY SEG the baseline.
    assert len(rows) == 6, rows
    for kind in ("SEG", "SEG_LABELMAP", "RTSTRUCT"):
        assert any(f"| export | {kind} build+save" in row for row in rows), kind
    binary = next(row for row in rows if "| export | SEG build+save" in row)
    assert binary.rstrip().endswith("| 1.00x |")
    value = re.search(r"\| ([0-9.]+) s \|", binary)
    assert value is not None and float(value.group(1)) > 0
    for key in (
        "| CPU |",
        "| cores |",
        "| memory |",
        "| GPU |",
        "| Orthanc | 1.10.1 |",
        "| torch |",
    ):
        assert key in report, key
    assert re.search(r"\| export \| .* \| `--slices 60 .*` \| \d+ \| ok \|", report)


def test_bench_refuses_an_unknown_benchmark() -> None:
    result = subprocess.run(
        [*AINODE, "bench", "--only", "nothing"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "unknown benchmark(s) nothing" in result.stdout
