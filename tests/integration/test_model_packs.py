"""Model packs installed with ``ainode models add`` into a running node, then run as jobs.

Packs are small and real, made here from the demo nnU-Net model and the repository's scripts:
an nnU-Net results folder, the zip nnU-Net's own ``nnUNetv2_export_model_to_zip`` writes,
TotalSegmentator's five-part ``total`` task laid out under its dataset names (every part the demo
model), its 3 mm ``total_fast`` model as a zip, and an ONNX file from
``scripts/build_test_onnx_model.py`` with a labels file. Each is installed through the CLI
against the node's settings; the node is restarted to load the registry; then each model runs as
a job on one phantom series and its SEG, read back from Orthanc with highdicom, is compared with
the phantom's truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from nodeharness import Node, settings_env, start_node, wait_for, write_rules

from ainode.phantoms import BOX, SPHERE, Geometry, Phantom, SeriesIds, make_phantom
from ainode.phantoms import phantom_datasets as datasets_of
from ainode.settings import REPO_ROOT
from ainode.totalseg_tasks import totalsegmentator_tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = REPO_ROOT / "sample-data" / "models" / "demo-phantom-nnunet"
TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
NEVER = """\
version: 1
rules:
  - name: never
    when: {all: [{Modality: XX}]}
    pipeline: demo-phantom
"""
REGISTRY = f"""\
models_root: models
models:
  - id: demo-phantom
    name: Demo
    kind: nnunet
    version: "2.0.0"
    weights: {DEMO}
    labels:
      - value: 1
        name: Sphere
        category: {{value: "260787004", scheme: SCT, meaning: Physical object}}
        type: {{value: "122485", scheme: DCM, meaning: Sphere}}
"""
RUN_TIMEOUT_S = 300.0
EXPORT_ARGS = ("-c", "3d_fullres", "-f", "0")
ENDED = ("done", "failed")
BUILD_ONNX = REPO_ROOT / "scripts" / "build_test_onnx_model.py"
# What `ainode models add` says it recognised, per model id (one pack of each kind).
RECOGNISED = {
    "phantoms": "phantoms: nnunet, 2 label(s)",
    "exported": "exported: nnunet, 2 label(s)",
    "totalseg-total": "totalsegmentator task total, 2 label(s)",
    "totalseg-total-fast": "totalsegmentator task total_fast, 2 label(s)",
    "objects": "objects: onnx, 1 label(s)",
}


def _nnunet_results(root: Path, dataset: str, labels: dict[str, int] | None = None) -> Path:
    """The demo model as ``<root>/<dataset>/<trainer>``, optionally with other label names."""
    folder = root / dataset / TRAINER
    shutil.copytree(DEMO, folder)
    # What nnU-Net's training leaves beside the checkpoint, and its exporter takes along.
    (folder / "fold_0" / "progress.png").write_bytes(b"")
    (folder / "fold_0" / "validation").mkdir()
    (folder / "fold_0" / "validation" / "summary.json").write_text("{}")
    (folder / "dataset_fingerprint.json").write_text("{}")
    if labels is not None:
        described = json.loads((folder / "dataset.json").read_text())
        described["labels"] = {"background": 0, **labels}
        (folder / "dataset.json").write_text(json.dumps(described))
    return folder


def _cli(node: Node, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ainode.cli", "models", *args],
        env=settings_env(node.settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _build_pack(model_id: str, work: Path) -> list[str]:
    """``ainode models add`` arguments for one model id, its pack made under ``work``."""
    if model_id == "phantoms":
        _nnunet_results(work / "results", "Dataset901_Phantoms")
        return [str(work / "results")]
    if model_id == "exported":
        exported_root = work / "export-results"
        _nnunet_results(exported_root, "Dataset902_Exported")
        exported = work / "exported.zip"
        subprocess.run(
            ["nnUNetv2_export_model_to_zip", "-d", "902", "-o", str(exported), *EXPORT_ARGS],
            env={**os.environ, "nnUNet_results": str(exported_root)},
            check=True,
            capture_output=True,
            timeout=300,
            executable=str(Path(sys.executable).parent / "nnUNetv2_export_model_to_zip"),
        )
        return [str(exported)]
    if model_id == "totalseg-total":
        total = work / "totalseg" / "nnunet" / "results"
        for dataset in totalsegmentator_tasks()["total"]:
            _nnunet_results(total, dataset)
        return [str(work / "totalseg"), "--only", "spleen,kidney_right"]
    if model_id == "totalseg-total-fast":
        fast_dir = work / "fast"
        (fast_name,) = totalsegmentator_tasks()["total_fast"]
        _nnunet_results(fast_dir, fast_name, {"spleen": 1, "kidney_right": 2})
        return [shutil.make_archive(str(work / "fast"), "zip", fast_dir)]
    assert model_id == "objects", model_id
    onnx_file = work / "objects.onnx"
    subprocess.run(
        [sys.executable, str(BUILD_ONNX), "--output", str(onnx_file)],
        check=True,
        timeout=300,
    )
    labels = work / "labels.yaml"
    labels.write_text("1: object\n")
    return [str(onnx_file), "--labels", str(labels)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("packs-node")
    registry = folder / "models.yaml"
    registry.write_text(REGISTRY)
    started = start_node(
        folder / "node",
        interactive_enabled=False,
        models_registry=registry,
        routing_rules=write_rules(folder / "rules.yaml", NEVER),
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def install(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Make one model's pack and add it through the CLI, the first time it is asked for (so the
    installs are spread over the tests that ask, none of them long); returns the CLI's output."""
    work = tmp_path_factory.mktemp("packs")
    outputs: dict[str, str] = {}

    def installed_once(model_id: str) -> str:
        if model_id not in outputs:
            done = _cli(node, "add", *_build_pack(model_id, work))
            assert done.returncode == 0, done.stdout + done.stderr
            outputs[model_id] = done.stdout
        return outputs[model_id]

    return installed_once


@pytest.fixture(scope="module")
def installed(node: Node, install: Callable[[str], str]) -> dict[str, str]:
    """Every pack added (its output by model id), then the node restarted to load them."""
    outputs = {model_id: install(model_id) for model_id in RECOGNISED}
    node.restart("orthanc")
    node.restart("worker")
    return outputs


@pytest.mark.parametrize("model_id", list(RECOGNISED))
def test_add_recognises_the_pack_runs_it_and_prints_a_rule(
    install: Callable[[str], str], model_id: str
) -> None:
    output = install(model_id)
    assert RECOGNISED[model_id] in output, output
    assert f"{model_id} loaded and ran on cpu" in output, output
    assert f"    pipeline: {model_id}\n" in output, output


def test_a_label_without_a_standard_code_gets_a_private_one(
    install: Callable[[str], str],
) -> None:
    assert "99AINODE" in install("objects")  # "object" has no standard code: it says so
    assert "99AINODE" not in install("totalseg-total")  # spleen and kidney_right have


def test_registry_entries_carry_codes_and_the_node_sees_the_models(
    node: Node, installed: dict[str, str]
) -> None:
    models = {m["id"]: m for m in node.json("/ai/models")["models"]}
    for model_id in installed:
        assert models[model_id]["availability"]["available"], models[model_id]
    total = models["totalseg-total"]
    types = {label["name"]: label["type"]["value"] for label in total["labels"]}
    assert types == {"spleen": "78961009", "kidney_right": "9846003"}
    listing = _cli(node, "list")
    assert listing.returncode == 0
    assert all(f"ok      {model_id}" in listing.stdout for model_id in installed), listing.stdout


def test_check_runs_an_installed_model(node: Node, installed: dict[str, str]) -> None:
    done = _cli(node, "check", "totalseg-total-fast")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "totalseg-total-fast loaded and ran on cpu" in done.stdout


def test_a_pack_that_does_not_load_is_not_installed(
    node: Node, installed: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "results"
    folder = _nnunet_results(broken, "Dataset903_Broken")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    registry = Path(node.settings.models_registry)
    before = registry.read_text()
    done = _cli(node, "add", str(broken))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "broken: does not run" in done.stdout
    assert registry.read_text() == before
    assert not (registry.parent / "models" / "broken").exists()
    no_labels = _cli(node, "add", str(tmp_path / "x.onnx"))
    assert no_labels.returncode == 2 and "does not exist" in no_labels.stdout


def _push(node: Node, folder: Path) -> tuple[Phantom, SeriesIds]:
    phantom = make_phantom(Geometry(shape=(40, 64, 64)), seed=11, require=(SPHERE, BOX))
    ids = SeriesIds()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dataset in enumerate(datasets_of(phantom, ids)):
        path = folder / f"IM{index:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    node.storescu(paths)
    wait_for(lambda: node.jobs(series=ids.series_uid), timeout_s=120, what="the series decided")
    return phantom, ids


def _seg_labels(node: Node, job: dict[str, Any], ids: SeriesIds) -> dict[str, np.ndarray]:
    """The job's SEG from Orthanc, read by highdicom: label name -> mask in position order."""
    (seg,) = [
        hd.seg.Segmentation.from_dataset(dataset)
        for instance_id in job["outputs"]
        if (
            dataset := pydicom.dcmread(BytesIO(node.get(f"/instances/{instance_id}/file").content))
        ).Modality
        == "SEG"
    ]
    instances = node.json(f"/series/{node.lookup(ids.series_uid)}/instances")
    ordered = sorted(
        instances, key=lambda i: float(i["MainDicomTags"]["ImagePositionPatient"].split("\\")[2])
    )
    uids = [str(i["MainDicomTags"]["SOPInstanceUID"]) for i in ordered]
    numbers = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    return {
        str(item.SegmentLabel): numbers == int(item.SegmentNumber) for item in seg.SegmentSequence
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def test_each_installed_model_runs_as_a_job(
    node: Node, installed: dict[str, str], tmp_path: Path
) -> None:
    phantom, ids = _push(node, tmp_path / "series")
    series_id = node.lookup(ids.series_uid)
    for model_id in installed:
        response = node.post(
            f"/ai/series/{series_id}/run", json={"pipeline": model_id, "outputs": ["SEG"]}
        )
        assert response.status_code in (200, 201, 202), response.text

    def finished() -> dict[str, dict[str, Any]] | None:
        jobs = {j["pipeline"]: j for j in node.jobs(series=ids.series_uid) if j["pipeline"]}
        ended = {p: j for p, j in jobs.items() if p in installed and j["state"] in ENDED}
        return ended if len(ended) == len(installed) else None

    jobs = wait_for(finished, timeout_s=RUN_TIMEOUT_S * len(installed), what="every model's job")
    for model_id, job in jobs.items():
        assert job["state"] == "done", (model_id, job["error"])
    sphere, box = phantom.labels == SPHERE, phantom.labels == BOX
    expected = {
        "phantoms": {"sphere": sphere, "box": box},
        "exported": {"sphere": sphere, "box": box},
        "totalseg-total": {"spleen": sphere, "kidney_right": box},
        "totalseg-total-fast": {"spleen": sphere, "kidney_right": box},
    }
    for model_id, truth in expected.items():
        masks = _seg_labels(node, jobs[model_id], ids)
        for name, mask in truth.items():
            score = _dice(masks[name], mask)
            assert score >= 0.85, f"{model_id} {name}: Dice {score:.3f}"
    objects = _seg_labels(node, jobs["objects"], ids)["object"]
    assert _dice(objects, phantom.labels > 0) >= 0.85
