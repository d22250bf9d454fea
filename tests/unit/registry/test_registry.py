"""The model registry: schema validation with file:line field messages, lookup, availability."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ainode.registry import (
    DEFAULT_MODELS_ROOT,
    InferenceParams,
    ModelKind,
    RegistryError,
    UnknownModelError,
    load_registry,
)
from ainode.settings import REPO_ROOT
from ainode.totalseg_tasks import totalsegmentator_tasks
from ainode.yamlmarks import MAX_FILE_BYTES, MAX_NODES

LABEL = """\
      - value: 1
        name: Sphere
        category: {value: "260787004", meaning: Physical object}
        type: {value: "122485", scheme: DCM, meaning: Sphere}
"""


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(body)
    return path


def _block(text: str) -> str:
    """A YAML list item written flush-left in the test, indented as an entry of ``models``."""
    return textwrap.indent(textwrap.dedent(text), "  ")


def _model(model_id: str = "m1", extra: str = "", kind: str = "nnunet") -> str:
    return (
        f"  - id: {model_id}\n    name: Model {model_id}\n    kind: {kind}\n"
        f'    version: "1"\n    weights: {model_id}-weights\n{extra}    labels:\n{LABEL}'
    )


def _error(path: Path) -> str:
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    return str(caught.value)


def test_repository_registry_is_valid_and_has_the_demo_model() -> None:
    registry = load_registry(REPO_ROOT / "configs" / "models.yaml")
    demo = registry.get("DEMO")  # aliases are case-insensitive
    assert demo.id == "demo-phantom"
    assert demo.kind is ModelKind.NNUNET
    assert [label.value for label in demo.labels] == [1, 2]
    assert registry.models_root == DEFAULT_MODELS_ROOT
    assert registry.weights_path(demo) == DEFAULT_MODELS_ROOT / "demo-phantom-nnunet"
    assert registry.check("demo-phantom").available, registry.check("demo-phantom").reason
    assert registry.check("demo-phantom-onnx").available
    cascade = registry.get("demo-cascade")
    assert [s.model for s in registry.stages(cascade.id)] == ["demo-phantom", "demo-phantom"]
    assert [label.name for label in registry.output_labels(cascade.id)] == ["Sphere", "Box"]
    confirmed = registry.output_labels("demo-phantom-confirmed")  # the ONNX model's one label
    assert [(label.value, label.name) for label in confirmed] == [(1, "Object")]


def test_unknown_model_error_lists_known_ids(tmp_path: Path) -> None:
    registry = load_registry(_write(tmp_path, "models:\n" + _model()))
    with pytest.raises(UnknownModelError, match=r"no model or cascade called 'nope'; known: m1"):
        registry.get("nope")
    assert "m1" in registry and "nope" not in registry


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    body = "models:\n" + _model().replace(
        '        type: {value: "122485", scheme: DCM, meaning: Sphere}\n', ""
    )
    path = _write(tmp_path, body)
    message = _error(path)
    # line 8: "- value: 1" is the label entry that lacks its type
    assert f"{path}:8 models[0].labels[0].type: Field required" in message


def test_wrong_type_is_reported_at_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n" + _model(extra="    defaults:\n      folds: [zero]\n"))
    message = _error(path)
    assert f"{path}:8 models[0].defaults.folds[0]:" in message


def test_misspelt_key_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n" + _model(extra="    min_gpu_memory: 100\n"))
    assert f"{path}:7 models[0].min_gpu_memory: Extra inputs are not permitted" in _error(path)


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n" + _model(extra='    version: "2"\n'))
    assert f"{path}:7 models[0].version: duplicate key" in _error(path)


def test_kind_rules_are_checked(tmp_path: Path) -> None:
    body = "models:\n" + _model().replace("    weights: m1-weights\n", "")
    path = _write(tmp_path, body)
    assert f"{path}:2 models[0]: a nnunet model needs 'weights'" in _error(path)
    path = _write(tmp_path, "models:\n" + _model(kind="totalsegmentator"))
    assert "needs 'totalsegmentator: {task: ...}'" in _error(path)


def test_clashing_aliases_and_bad_cascade_stages(tmp_path: Path) -> None:
    body = (
        "models:\n"
        + _model("m1", extra="    aliases: [shared]\n")
        + _model("m2", extra="    aliases: [SHARED]\n")
        + _block(
            """\
              - id: c1
                name: A cascade
                kind: cascade
                version: "1"
                stages:
                  - model: m1
                  - model: missing-model
                    from_previous: {mode: crop}
                  - model: m2
                    from_previous: {mode: intersect}
                    params: {tta: maybe}
            """
        )
    )
    path = _write(tmp_path, body)
    message = _error(path)
    assert f"{path}:18 models[1].aliases: 'SHARED' is already used by model 'm1'" in message
    assert f"{path}:30 models[2].stages[1].model: unknown model 'missing-model'" in message
    assert f"{path}:34 models[2].stages[2].params.tta:" in message


def test_cascade_structure_is_validated(tmp_path: Path) -> None:
    body = (
        "models:\n"
        + _model()
        + _block(
            """\
          - id: c1
            name: A cascade
            kind: cascade
            version: "1"
            stages:
              - model: m1
              - model: m1
        """
        )
    )
    path = _write(tmp_path, body)
    assert "stage 1 needs 'from_previous'" in _error(path)


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n  - id: [unclosed\n")
    with pytest.raises(RegistryError, match=r"models\.yaml:3 .*not valid YAML"):
        load_registry(path)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """Aliases that expand exponentially are refused before any data is built."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    path = _write(tmp_path, "\n".join(lines) + "\nmodels:\n" + _model())
    message = _error(path)
    assert f"more than {MAX_NODES} values" in message
    assert "a model registry is never that large" in message
    assert f"{path}:" in message


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "models: &loop [*loop]\n")
    assert "an alias refers to itself" in _error(path)


def test_oversize_registry_is_refused(tmp_path: Path) -> None:
    padding = "# " + "x" * 98 + "\n"
    body = "models:\n" + _model() + padding * (MAX_FILE_BYTES // len(padding) + 1)
    path = _write(tmp_path, body)
    assert f"{path}:1 (file): the file is larger than {MAX_FILE_BYTES} bytes" in _error(path)


def test_registry_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    body = "models:\n" + _model()
    path.write_bytes(body.encode() + b"# caf\xe9\n")
    line = body.count("\n") + 1  # the comment after the model
    assert f"{path}:{line} (file): the file is not UTF-8 text" in _error(path)


def test_params_merge_validates_unknown_keys() -> None:
    params = InferenceParams().merged({"tta": True, "classes": [2]})
    assert params.tta and params.classes == [2]
    with pytest.raises(ValueError, match="Extra inputs"):
        InferenceParams().merged({"thresold": 0.5})


def _nnunet_folder(folder: Path, folds: tuple[int, ...] = (0,)) -> None:
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text("{}")
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")


def test_availability_names_the_paths_it_looked_at(tmp_path: Path) -> None:
    body = (
        "models:\n"
        + _model("present")
        + _model("nested")
        + _model("nofold", extra="    defaults: {folds: [0, 1]}\n")
        + _model("absent")
        + _model(
            "ts", kind="totalsegmentator", extra="    totalsegmentator: {task: lung_vessels}\n"
        )
        + _model("onnxfile", kind="onnx")
        + _block(
            """\
              - id: chain
                name: chain
                kind: cascade
                version: "1"
                stages:
                  - model: present
                  - model: absent
                    from_previous: {mode: intersect}
            """
        )
    )
    path = _write(tmp_path, body)
    root = tmp_path / "models"
    _nnunet_folder(root / "present-weights")
    _nnunet_folder(root / "nested-weights" / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    _nnunet_folder(root / "nofold-weights", folds=(0,))
    dataset = totalsegmentator_tasks()["lung_vessels"][0]
    _nnunet_folder(
        root
        / "ts-weights"
        / "nnunet"
        / "results"
        / dataset
        / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    )
    registry = load_registry(path, models_root=root)
    state = registry.availability()
    assert state["present"].available
    assert state["nested"].available
    assert not state["nofold"].available
    assert (
        str(root / "nofold-weights" / "fold_1" / "checkpoint_final.pth") in state["nofold"].reason
    )
    assert not state["absent"].available
    assert str(root / "absent-weights") in state["absent"].reason
    assert state["ts"].available, state["ts"].reason
    assert not state["onnxfile"].available
    assert str(root / "onnxfile-weights") in state["onnxfile"].reason
    assert not state["chain"].available and "stage absent" in state["chain"].reason


def test_models_root_from_file_is_relative_to_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "models_root: weights-here\nmodels:\n" + _model())
    registry = load_registry(path)
    assert registry.models_root == (tmp_path / "weights-here").resolve()
    assert load_registry(path, models_root=tmp_path / "x").models_root == tmp_path / "x"
