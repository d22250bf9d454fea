"""``ainode models list | add PATH | check ID``: install and check model packs.

``add`` unpacks the pack into a staging folder under the models root, recognises it
(:mod:`ainode.modelpacks`), moves its weights to ``<models root>/<id>``, appends the registry
entry, then runs the model once (:mod:`ainode_worker.inference.smoke`); if that run fails, the
entry and the weights are taken out again, so the registry never names a model that does not
load. The node's Orthanc and workers read the registry at start: restart them to use the model.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from ainode.modelpacks import (
    Pack,
    PackError,
    add_entry,
    inspect,
    registry_entry,
    routing_rule,
    unpack,
)
from ainode.registry import Registry, RegistryError, UnknownModelError, load_registry
from ainode.settings import Settings

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="list, install and check models (model packs)")
    verbs = models.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="the registry's models and whether they can run")
    listing.set_defaults(func=cmd_list)
    add = verbs.add_parser(
        "add",
        help="install an nnU-Net results folder or zip, TotalSegmentator weights, or an ONNX file",
    )
    add.add_argument(
        "path", type=Path, nargs="+", help="one pack, or the parts of one (TotalSegmentator's zips)"
    )
    add.add_argument("--id", help="the model's id (default: from the pack)")
    add.add_argument("--labels", type=Path, help="ONNX: labels file, {1: liver, 2: spleen}")
    add.add_argument(
        "--configuration", help="nnU-Net configuration when there are several (3d_fullres, ...)"
    )
    add.add_argument("--only", help="keep only these labels (comma-separated names)")
    add.add_argument("--version", default="1.0", help="the model version written to results")
    add.set_defaults(func=cmd_add)
    check = verbs.add_parser("check", help="check a model's weights and run it once")
    check.add_argument("model")
    check.set_defaults(func=cmd_check)


def _registry(settings: Settings) -> Registry:
    return load_registry(settings.models_registry)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    try:
        registry = _registry(settings)
    except (RegistryError, OSError) as error:
        _out(str(error))
        return 2
    _out(f"registry {registry.source}, models under {registry.models_root}")
    for spec in registry:
        state = registry.check(spec.id)
        mark = "ok     " if state.available else "MISSING"
        _out(f"{mark} {spec.id:<28} {spec.kind.value:<16} {spec.version:<8} {state.reason}")
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    try:
        registry = _registry(settings)
        spec = registry.get(args.model)
    except (RegistryError, OSError, UnknownModelError) as error:
        _out(str(error))
        return 2
    state = registry.check(spec.id)
    if not state.available:
        _out(f"{spec.id}: not available: {state.reason}")
        return 1
    if not _smoke(registry, spec.id, settings):
        return 1
    _out("routing rule to paste into routing-rules.yaml:")
    _out(routing_rule(spec.id, spec.input.modality))
    return 0


def _smoke(registry: Registry, model_id: str, settings: Settings) -> bool:
    from ainode_worker.inference.smoke import smoke_run

    _out(f"{model_id}: running once on a synthetic volume ...")
    try:
        result = smoke_run(registry, model_id, settings)
    except Exception as error:  # whatever a job would fail with; reported, not raised
        _out(f"{model_id}: does not run: {type(error).__name__}: {error}")
        return False
    _out(result.describe())
    return True


def cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    try:
        registry = _registry(settings)
    except (RegistryError, OSError) as error:
        _out(str(error))
        return 2
    sources: list[Path] = [path.expanduser() for path in args.path]
    for source in sources:
        if not source.exists():
            _out(f"{source} does not exist")
            return 2
    shown = ", ".join(map(str, sources))
    root = registry.models_root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".adding-") as staging:
        try:
            for index, source in enumerate(sources):  # parts side by side, found by name
                unpack(source, Path(staging) / "pack" / str(index))
            pack = inspect(Path(staging) / "pack", args.labels, args.configuration)
            model_id = args.id or pack.suggested_id()
            _check_new(registry, model_id)
            weights = _place(pack, root / model_id)
            only = [n.strip() for n in args.only.split(",")] if args.only else None
            plan = registry_entry(pack, model_id, weights, version=args.version, only=only)
        except PackError as error:
            _out(f"cannot install {shown}: {error}")
            return 2
    original = Path(settings.models_registry).read_text(encoding="utf-8")
    try:
        add_entry(Path(settings.models_registry), plan.entry)
    except (PackError, RegistryError) as error:
        shutil.rmtree(root / model_id, ignore_errors=True)
        _out(f"cannot register {model_id}: {error}")
        return 2
    described = f"{pack.kind}" + (f" task {pack.task}" if pack.task else "")
    count = len(plan.entry["labels"])
    _out(f"{model_id}: {described}, {count} label(s), weights in {root / model_id}")
    if not _smoke(load_registry(settings.models_registry), model_id, settings):
        Path(settings.models_registry).write_text(original, encoding="utf-8")
        shutil.rmtree(root / model_id, ignore_errors=True)
        _out(f"{model_id} was not installed (registry and models root left as they were)")
        return 1
    _out(f"registered {model_id} in {settings.models_registry}")
    if plan.uncoded:
        shown = ", ".join(plan.uncoded[:8]) + (", ..." if len(plan.uncoded) > 8 else "")
        _out(
            f"no standard code known for {len(plan.uncoded)} label(s) ({shown}): they carry "
            "the private scheme "
            "99AINODE; put SNOMED CT codes into the registry entry for them"
        )
    _out("routing rule to paste into routing-rules.yaml:")
    _out(routing_rule(model_id, str(plan.entry["input"]["modality"])))
    _out("restart the node's Orthanc and workers to load it (ainode down; ainode up --detach)")
    return 0


def _check_new(registry: Registry, model_id: str) -> None:
    if not _ID.match(model_id):
        raise PackError(f"model id {model_id!r}: letters, digits, '.', '_' and '-' only")
    if model_id in registry:
        raise PackError(f"the registry already has a model {model_id!r}; choose --id")
    if (registry.models_root / model_id).exists():
        raise PackError(f"{registry.models_root / model_id} exists already; choose --id")


def _place(pack: Pack, target: Path) -> str:
    """Move the pack's weights to ``target``; the registry's ``weights`` for them."""
    if pack.kind == "onnx":
        assert pack.onnx_file is not None
        target.mkdir()
        shutil.move(pack.onnx_file, target / "model.onnx")
        return f"{target.name}/model.onnx"
    if pack.kind == "nnunet":
        shutil.move(pack.model_folders[0], target)
        pack.model_folders = [target]
        return target.name
    target.mkdir()
    moved = []
    for folder in pack.model_folders:
        dataset = target / folder.parent.name
        dataset.mkdir(exist_ok=True)
        shutil.move(folder, dataset / folder.name)
        moved.append(dataset / folder.name)
    pack.model_folders = moved
    return target.name
