"""TotalSegmentator tasks resolved in TotalSegmentator's weights layout (demo model inside)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from ainode_worker.inference.errors import WeightsMissingError
from ainode_worker.inference.pipeline import BackendCache, run_pipeline
from ainode_worker.volume import Volume

from ainode.phantoms import Phantom
from ainode.registry import load_registry
from ainode.totalseg_tasks import totalsegmentator_tasks

from .helpers import dice

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"

REGISTRY = """\
models:
  - id: ts-{task}
    name: TotalSegmentator {task}
    kind: totalsegmentator
    version: "2.0"
    weights: totalseg-home
    totalsegmentator: {{task: {task}}}
    labels:
      - value: 7
        name: box
        category: {{value: "260787004", meaning: Physical object}}
        type: {{value: "706342009", meaning: Phantom}}
      - value: 3
        name: sphere
        category: {{value: "260787004", meaning: Physical object}}
        type: {{value: "122485", scheme: DCM, meaning: Sphere}}
"""


def _place(demo: Path, root: Path, dataset: str) -> None:
    target = root / "totalseg-home" / "nnunet" / "results" / dataset / TRAINER_FOLDER
    shutil.copytree(demo, target)


def test_task_runs_from_totalsegmentator_layout_with_labels_matched_by_name(
    demo_model_folder: Path,
    tmp_path: Path,
    phantom: tuple[Phantom, Volume],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH"):
        monkeypatch.setenv(variable, "unset")  # the backend sets them; undone after the test
    (tmp_path / "models.yaml").write_text(REGISTRY.format(task="lung_vessels"))
    _place(demo_model_folder, tmp_path / "models", totalsegmentator_tasks()["lung_vessels"][0])
    registry = load_registry(tmp_path / "models.yaml", models_root=tmp_path / "models")
    assert registry.check("ts-lung_vessels").available
    data_dir = tmp_path / "node-data"
    truth, volume = phantom
    result = run_pipeline(
        registry, "ts-lung_vessels", {"main": volume}, {}, cache=BackendCache(data_dir)
    )
    # the registry's values (3 sphere, 7 box), not the model's (1, 2)
    assert dice((result.labels == 3), truth.labels == 1, True) >= 0.9
    assert dice((result.labels == 7), truth.labels == 2, True) >= 0.9
    # usage statistics off, home inside the node's data dir
    home = data_dir / "totalsegmentator"
    assert json.loads((home / "config.json").read_text())["send_usage_stats"] is False
    assert os.environ["TOTALSEG_HOME_DIR"] == str(home)


def test_missing_part_of_a_task_names_the_folder(
    demo_model_folder: Path,
    tmp_path: Path,
    phantom: tuple[Phantom, Volume],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH"):
        monkeypatch.setenv(variable, "unset")  # the backend sets them; undone after the test
    (tmp_path / "models.yaml").write_text(REGISTRY.format(task="total"))
    parts = totalsegmentator_tasks()["total"]
    _place(demo_model_folder, tmp_path / "models", parts[0])
    registry = load_registry(tmp_path / "models.yaml", models_root=tmp_path / "models")
    state = registry.check("ts-total")
    assert not state.available and parts[1] in state.reason
    with pytest.raises(WeightsMissingError, match=parts[1]):
        run_pipeline(
            registry, "ts-total", {"main": phantom[1]}, {}, cache=BackendCache(tmp_path / "d")
        )
