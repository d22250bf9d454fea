"""Model packs: recognise a model a site brings, put it under the models root, register it.

What ``ainode models add PATH`` accepts:

* an nnU-Net v2 results folder (``Dataset123_X/<Trainer>__<Plans>__<configuration>/``, or a
  folder above it) or the zip ``nnUNetv2_export_model_to_zip`` writes;
* TotalSegmentator's released weights (folders or zips, or its ``nnunet/results``), recognised by
  their dataset folder names (:mod:`ainode.totalseg_tasks`): the five parts of ``total`` are one
  task, ``Dataset297_..._3mm`` is ``total_fast``;
* an ONNX file, with a labels file (YAML or JSON: ``{1: liver, 2: spleen}``).

Pure (no torch): proving that the model loads and runs is the worker's
(:mod:`ainode_worker.inference.smoke`). Zip members are checked to stay inside the target folder;
nothing is written at a path taken from a pack except below a folder of our choosing.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ainode.label_codes import coded_label
from ainode.registry import load_registry
from ainode.totalseg_tasks import part_label_names, task_for_datasets, task_label_names

PackKind = Literal["nnunet", "totalsegmentator", "onnx"]
_DATASET = re.compile(r"^Dataset\d{3,}_")
_MAX_UNPACKED_BYTES = 64 * 1024**3  # a zip claiming more is refused before anything is written


class PackError(ValueError):
    """The path is not a model pack this node can install; the message says what is wrong."""


@dataclass
class Pack:
    """A recognised pack, laid out under ``root`` (the folder that becomes the weights)."""

    kind: PackKind
    root: Path
    labels: dict[int, str]
    model_folders: list[Path] = field(default_factory=list)
    task: str | None = None
    onnx_file: Path | None = None
    channels: list[str] = field(default_factory=lambda: ["CT"])

    def suggested_id(self) -> str:
        if self.kind == "totalsegmentator":
            return f"totalseg-{self.task}".replace("_", "-")
        if self.kind == "onnx" and self.onnx_file is not None:
            return _slug(self.onnx_file.stem)
        folder = self.model_folders[0]
        dataset = next((p.name for p in folder.parents if _DATASET.match(p.name)), "")
        return _slug(_DATASET.sub("", dataset) or folder.name)

    def folds(self) -> list[int | str]:
        """Folds with a checkpoint in every model folder (``all`` when trained on all data)."""
        common: set[str] | None = None
        for folder in self.model_folders:
            present = {p.parent.name.removeprefix("fold_") for p in folder.glob("fold_*/*.pth")}
            common = present if common is None else common & present
        return sorted(
            (int(f) if f.isdigit() else f for f in common or ()), key=lambda f: (str(type(f)), f)
        )


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "model"


# ---------------------------------------------------------------- unpacking


def unpack(source: Path, target: Path) -> None:
    """Copy a folder, extract a zip, or copy a single file into the (new) folder ``target``."""
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    elif zipfile.is_zipfile(source):
        _extract(source, target)
    elif source.is_file():
        target.mkdir(parents=True)
        shutil.copy2(source, target / source.name)
    else:
        raise PackError(f"{source} is neither a folder, a zip nor a file")


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        if sum(member.file_size for member in members) > _MAX_UNPACKED_BYTES:
            raise PackError(f"{archive} unpacks to more than {_MAX_UNPACKED_BYTES >> 30} GB")
        base = target.resolve()
        for member in members:
            destination = (target / member.filename).resolve()
            if not destination.is_relative_to(base) or member.filename.startswith("/"):
                raise PackError(f"{archive} has a member outside its folder: {member.filename!r}")
        zipped.extractall(target)


# ---------------------------------------------------------------- recognising


def inspect(root: Path, labels_file: Path | None = None, configuration: str | None = None) -> Pack:
    """What kind of pack the unpacked folder ``root`` holds, with its labels."""
    onnx_files = sorted(root.rglob("*.onnx"))
    plans = sorted(p.parent for p in root.rglob("plans.json") if any(p.parent.glob("fold_*")))
    if configuration is not None:
        plans = [folder for folder in plans if folder.name.endswith(f"__{configuration}")]
    if onnx_files and not plans:
        if len(onnx_files) > 1:
            raise PackError(f"several ONNX files: {', '.join(p.name for p in onnx_files)}")
        if labels_file is None:
            raise PackError("an ONNX model needs --labels FILE (YAML or JSON: {1: liver, ...})")
        return Pack("onnx", root, _read_labels_file(labels_file), onnx_file=onnx_files[0])
    if not plans:
        raise PackError(
            "no nnU-Net model (a folder with plans.json, dataset.json and fold_*/) and no "
            ".onnx file found"
        )
    by_dataset: dict[str, list[Path]] = {}
    for folder in plans:
        dataset = next((p.name for p in folder.parents if _DATASET.match(p.name)), folder.name)
        by_dataset.setdefault(dataset, []).append(folder)
    tasks = task_for_datasets(set(by_dataset))
    if tasks:
        return _totalsegmentator(root, tasks[0], by_dataset, configuration)
    if len(plans) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in plans)
        raise PackError(f"several nnU-Net models ({names}); choose one with --configuration")
    described = _dataset_json(plans[0])
    return Pack(
        "nnunet",
        root,
        _dataset_labels(described),
        model_folders=plans,
        channels=_channels(described),
    )


def _totalsegmentator(
    root: Path, task: str, by_dataset: dict[str, list[Path]], configuration: str | None
) -> Pack:
    from ainode.totalseg_tasks import totalsegmentator_tasks

    folders: list[Path] = []
    for dataset in totalsegmentator_tasks()[task]:
        candidates = by_dataset[dataset]
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise PackError(f"{dataset} holds several models ({names}); use --configuration")
        folders.append(candidates[0])
    if len(folders) > 1 and part_label_names(folders[0].parent.name) is not None:
        labels = task_label_names(task)  # merged parts: TotalSegmentator's numbering
    else:
        labels = _dataset_labels(_dataset_json(folders[0]))
    return Pack(
        "totalsegmentator",
        root,
        labels,
        model_folders=folders,
        task=task,
        channels=_channels(_dataset_json(folders[0])),
    )


def _dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PackError(f"{path} is missing or not JSON: {error}") from error
    if not isinstance(loaded, dict) or not isinstance(loaded.get("labels"), dict):
        raise PackError(f"{path} has no 'labels' mapping")
    return loaded


def _dataset_labels(dataset: dict[str, Any]) -> dict[int, str]:
    labels = {
        int(value): str(name)
        for name, value in dataset["labels"].items()
        if isinstance(value, int) and value > 0  # region-based labels (lists) are not supported
    }
    if not labels:
        raise PackError("dataset.json names no label above 0")
    return labels


def _channels(dataset: dict[str, Any]) -> list[str]:
    names = dataset.get("channel_names") or dataset.get("modality") or {"0": "CT"}
    return [str(names[key]) for key in sorted(names, key=int)]


def _read_labels_file(path: Path) -> dict[int, str]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise PackError(f"labels file {path} is not readable YAML/JSON: {error}") from error
    if isinstance(loaded, dict) and "labels" in loaded:
        loaded = loaded["labels"]  # nnU-Net's dataset.json shape: {name: value}
        loaded = {value: name for name, value in loaded.items() if value}
    if isinstance(loaded, list):
        loaded = dict(enumerate(loaded, start=1))
    if not isinstance(loaded, dict) or not loaded:
        raise PackError(f"labels file {path}: expected {{1: name, 2: name}} or a list of names")
    try:
        labels = {int(value): str(name) for value, name in loaded.items()}
    except (TypeError, ValueError) as error:
        raise PackError(f"labels file {path}: label values must be integers") from error
    if min(labels) < 1:
        raise PackError(f"labels file {path}: values start at 1 (0 is the background)")
    return labels


# ---------------------------------------------------------------- the registry entry


@dataclass
class EntryPlan:
    entry: dict[str, Any]
    uncoded: list[str]  # label names written with the node's private code (no standard one)


def registry_entry(
    pack: Pack, model_id: str, weights: str, *, version: str, only: list[str] | None = None
) -> EntryPlan:
    """The ``models.yaml`` entry of an installed pack (``weights`` relative to the models root)."""
    labels = pack.labels
    if only:
        wanted = {name.lower() for name in only}
        labels = {value: name for value, name in labels.items() if name.lower() in wanted}
        missing = wanted - {name.lower() for name in labels.values()}
        if missing:
            raise PackError(f"the model has no labels named {sorted(missing)}")
    specs = [coded_label(value, name) for value, name in sorted(labels.items())]
    entry: dict[str, Any] = {
        "id": model_id,
        "name": f"{model_id} ({pack.kind}, installed by ainode models add)",
        "kind": pack.kind,
        "version": version,
        "weights": weights,
        "labels": [spec.model_dump(mode="json", exclude_none=True) for spec, _ in specs],
        "input": {
            "modality": _modality(pack.channels[0]),
            "channels": ["main", *(_slug(c) for c in pack.channels[1:])],
        },
    }
    if pack.kind == "totalsegmentator":
        entry["totalsegmentator"] = {"task": pack.task}
    if pack.kind != "onnx":
        folds = pack.folds()
        if not folds:
            raise PackError("no fold_*/checkpoint (.pth) found in the model folder(s)")
        checkpoint = _checkpoint_name(pack.model_folders[0], folds[0])
        entry["defaults"] = {"folds": folds[:1], "checkpoint_name": checkpoint}
    return EntryPlan(entry, [name for spec, known in specs if not known for name in [spec.name]])


def _checkpoint_name(folder: Path, fold: int | str) -> str:
    names = sorted(p.name for p in (folder / f"fold_{fold}").glob("*.pth"))
    return "checkpoint_final.pth" if "checkpoint_final.pth" in names else names[0]


def _modality(channel: str) -> str:
    upper = channel.upper()
    for modality in ("CT", "MR", "PT", "US", "CR", "DX", "MG"):
        if upper.startswith(modality):
            return modality
    return "MR" if upper in {"T1", "T2", "FLAIR", "ADC", "DWI"} else "CT"


def add_entry(registry_file: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to ``models:`` (the file's comments kept), only if the result loads."""
    text = registry_file.read_text(encoding="utf-8")
    existing = yaml.safe_load(text) or {}
    models = existing.get("models") or []
    if any(str(model.get("id", "")).lower() == entry["id"].lower() for model in models):
        raise PackError(f"the registry {registry_file} already has a model {entry['id']!r}")
    if list(existing)[-1:] != ["models"]:
        raise PackError(f"{registry_file}: 'models' must be the last key to append to it")
    block = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=100)
    indented = "".join(f"  {line}" if line.strip() else line for line in block.splitlines(True))
    candidate = text.rstrip("\n") + "\n\n" + indented
    with tempfile.NamedTemporaryFile(
        "w", dir=registry_file.parent, suffix=".yaml", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(candidate)
    staged = Path(handle.name)
    try:
        load_registry(staged)  # RegistryError: nothing is changed
    except Exception:
        staged.unlink()
        raise
    staged.replace(registry_file)


def routing_rule(model_id: str, modality: str) -> str:
    """A rule to paste into routing-rules.yaml for the new model."""
    return (
        f"  - name: {model_id}\n"
        f"    description: {model_id} on {modality} series of at least 10 images\n"
        "    when:\n"
        "      all:\n"
        f"        - Modality: {modality}\n"
        "        - InstanceCount: {ge: 10}\n"
        f"    pipeline: {model_id}\n"
        "    outputs: [SEG]\n"
        "    destinations: [orthanc]\n"
    )
