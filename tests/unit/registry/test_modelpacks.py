"""Recognising model packs, and the registry entries written for them (no model is run here;
tests/integration/test_model_packs.py installs and runs real ones)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from ainode.label_codes import PRIVATE_SCHEME
from ainode.modelpacks import PackError, add_entry, inspect, registry_entry, unpack
from ainode.registry import RegistryError, load_registry
from ainode.totalseg_tasks import (
    base_task,
    part_label_names,
    task_for_datasets,
    task_label_names,
    totalsegmentator_tasks,
)

TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _model(root: Path, dataset: str, labels: dict[str, int], config: str = "3d_fullres") -> Path:
    folder = root / dataset / f"nnUNetTrainer__nnUNetPlans__{config}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "plans.json").write_text("{}")
    described = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **labels}}
    (folder / "dataset.json").write_text(json.dumps(described))
    return folder


def test_totalsegmentator_tables_come_from_its_package() -> None:
    tasks = totalsegmentator_tasks()
    assert len(tasks["total"]) == 5
    assert tasks["total_fast"] == ("Dataset297_TotalSegmentator_total_3mm_1559subj",)
    assert base_task("total_fast") == "total"
    assert task_label_names("total")[1] == "spleen"
    organs = part_label_names(tasks["total"][0])
    assert organs is not None and organs[1] == "spleen"
    assert part_label_names("Dataset901_Mine") is None
    assert task_for_datasets({*tasks["total"], "Dataset901_Mine"})[0] == "total"


def test_five_parts_are_one_total_task_with_totalsegmentators_numbering(tmp_path: Path) -> None:
    for dataset in totalsegmentator_tasks()["total"]:
        _model(tmp_path / "nnunet" / "results", dataset, {"a": 1})
    pack = inspect(tmp_path)
    assert (pack.kind, pack.task, len(pack.model_folders)) == ("totalsegmentator", "total", 5)
    assert pack.labels == task_label_names("total")
    assert pack.suggested_id() == "totalseg-total"
    plan = registry_entry(pack, "ts", "ts", version="2", only=["liver", "Spleen"])
    assert [label["name"] for label in plan.entry["labels"]] == ["spleen", "liver"]
    assert plan.entry["totalsegmentator"] == {"task": "total"}
    assert plan.uncoded == []
    with pytest.raises(PackError, match="no labels named"):
        registry_entry(pack, "ts", "ts", version="2", only=["nose"])


def test_the_3mm_model_is_total_fast_with_its_dataset_labels(tmp_path: Path) -> None:
    (fast,) = totalsegmentator_tasks()["total_fast"]
    _model(tmp_path, fast, {"spleen": 1, "kidney_right": 2})
    pack = inspect(tmp_path)
    assert (pack.kind, pack.task) == ("totalsegmentator", "total_fast")
    assert pack.labels == {1: "spleen", 2: "kidney_right"}


def test_an_own_nnunet_model_and_its_configurations(tmp_path: Path) -> None:
    _model(tmp_path, "Dataset501_Liver_Tumours", {"liver": 1, "tumour": 2})
    pack = inspect(tmp_path)
    assert (pack.kind, pack.suggested_id(), pack.folds()) == ("nnunet", "liver-tumours", [0])
    plan = registry_entry(pack, "liver-tumours", "liver-tumours", version="1")
    assert plan.uncoded == ["tumour"]
    tumour = plan.entry["labels"][1]
    assert tumour["type"]["scheme"] == PRIVATE_SCHEME
    assert plan.entry["labels"][0]["type"]["value"] == "10200004"  # SCT Liver
    _model(tmp_path, "Dataset501_Liver_Tumours", {"liver": 1}, config="2d")
    with pytest.raises(PackError, match="--configuration"):
        inspect(tmp_path)
    assert inspect(tmp_path, configuration="2d").model_folders[0].name.endswith("__2d")


def test_onnx_needs_a_labels_file_in_any_of_three_shapes(tmp_path: Path) -> None:
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "model.onnx").write_bytes(b"")
    with pytest.raises(PackError, match="--labels"):
        inspect(tmp_path / "pack")
    shapes = {
        "map.yaml": "1: liver\n3: spleen\n",
        "list.yaml": "[liver, spleen]\n",
        "dataset.json": json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 3}}),
    }
    expected = {"map.yaml": {1: "liver", 3: "spleen"}, "list.yaml": {1: "liver", 2: "spleen"}}
    expected["dataset.json"] = expected["map.yaml"]
    for name, text in shapes.items():
        (tmp_path / name).write_text(text)
        assert inspect(tmp_path / "pack", tmp_path / name).labels == expected[name]
    (tmp_path / "zero.yaml").write_text("0: background\n")
    with pytest.raises(PackError, match="start at 1"):
        inspect(tmp_path / "pack", tmp_path / "zero.yaml")


def test_a_zip_member_outside_its_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("Dataset1_X/plans.json", "{}")
        zipped.writestr("../escaped.txt", "no")
    with pytest.raises(PackError, match="outside its folder"):
        unpack(archive, tmp_path / "target" / "pack")
    assert not (tmp_path / "target" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()


def test_nothing_recognisable_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("weights?")
    with pytest.raises(PackError, match="no nnU-Net model"):
        inspect(tmp_path)


def test_entries_are_appended_keeping_comments_and_only_when_valid(tmp_path: Path) -> None:
    registry = tmp_path / "models.yaml"
    registry.write_text(
        "# site registry\nmodels_root: models\nmodels:\n"
        "  - {id: a, name: A, kind: onnx, version: '1', weights: a.onnx,\n"
        "     labels: [{value: 1, name: x, category: {value: '1', meaning: c},"
        " type: {value: '2', meaning: t}}]}\n"
    )
    _model(tmp_path / "src", "Dataset501_Liver", {"liver": 1})
    plan = registry_entry(inspect(tmp_path / "src"), "liver", "liver", version="1")
    add_entry(registry, plan.entry)
    assert registry.read_text().startswith("# site registry\n")
    assert load_registry(registry).get("liver").labels[0].name == "liver"
    before = registry.read_text()
    with pytest.raises(PackError, match="already has"):
        add_entry(registry, plan.entry)
    broken = {**plan.entry, "id": "other", "labels": []}
    with pytest.raises(RegistryError):
        add_entry(registry, broken)
    assert registry.read_text() == before
    assert [p.name for p in tmp_path.glob("*.yaml")] == ["models.yaml"]
    assert yaml.safe_load(before)["models"][-1]["id"] == "liver"


def test_the_parts_of_total_as_separate_zips_are_one_task(tmp_path: Path) -> None:
    """TotalSegmentator publishes each part as a zip of its dataset folder."""
    zips = []
    for dataset in totalsegmentator_tasks()["total"]:
        _model(tmp_path / "released" / dataset, dataset, {"a": 1})
        archive = tmp_path / f"{dataset}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for file in (tmp_path / "released" / dataset).rglob("*"):
                zipped.write(file, file.relative_to(tmp_path / "released" / dataset))
        zips.append(archive)
    for index, archive in enumerate(zips):
        unpack(archive, tmp_path / "pack" / str(index))
    pack = inspect(tmp_path / "pack")
    assert (pack.kind, pack.task, len(pack.model_folders)) == ("totalsegmentator", "total", 5)
