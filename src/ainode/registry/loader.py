"""Reading ``models.yaml``: YAML with line marks (:mod:`ainode.yamlmarks`), schema, cross-checks.

Every problem is reported at once as ``file:line field: message``, so a typo is fixed in one
edit at start-up instead of surfacing as a failed job hours later. The YAML guards (size, alias
bombs, duplicate keys) are the routing rules' own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ainode.yamlmarks import MarkedDocument, YamlDocumentError, decode_document, load_marked

from .lookup import Registry
from .schema import ModelKind, ModelSpec, RegistryFile
from .weights import DEFAULT_MODELS_ROOT


class RegistryError(ValueError):
    """The registry file is invalid; the message lists every problem with file:line field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid model registry:\n  " + "\n  ".join(self.problems))


def load_registry(path: Path | str, models_root: Path | str | None = None) -> Registry:
    """Read and validate a registry file.

    ``models_root`` wins over the file's ``models_root`` (relative to the file), which wins over
    the repository's ``sample-data/models``. Raises :class:`RegistryError` listing every problem
    as ``file:line field: message``, or FileNotFoundError.
    """
    file = Path(path)
    raw = file.read_bytes()
    try:
        doc = load_marked(decode_document(raw), "a model registry")
    except YamlDocumentError as error:
        raise RegistryError(
            [f"{file}:{p.line or 1} {_field(p.location)}: {p.message}" for p in error.problems]
        ) from error
    if not isinstance(doc.data, dict):
        raise RegistryError([f"{file}:1 (file): expected a mapping with a 'models' list"])
    problems: list[str] = []
    try:
        parsed = RegistryFile.model_validate(doc.data)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            message = re.sub(r"^Value error, ", "", item["msg"])
            problems.append(_located(file, doc, item["loc"], message))
        raise RegistryError(problems) from error
    for loc, message in _cross_check(parsed.models):
        problems.append(_located(file, doc, loc, message))
    if problems:
        raise RegistryError(problems)
    if models_root is not None:
        root = Path(models_root)
    elif parsed.models_root is not None:
        root = (file.parent / parsed.models_root).resolve()
    else:
        root = DEFAULT_MODELS_ROOT
    return Registry(parsed.models, root.expanduser(), source=file)


def _field(path: Sequence[Any]) -> str:
    text = ""
    for part in map(str, path):
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "(file)"


def _located(file: Path, doc: MarkedDocument, loc: Sequence[Any], message: str) -> str:
    """``file:line field: message``; the line of the deepest part of ``loc`` in the file."""
    known = doc.written_part(loc)
    # Pydantic adds type tags (e.g. 'int', "literal['all']") to union locations: not fields.
    shown = [*known, *(part for part in loc[len(known) :] if not _is_type_tag(str(part)))]
    return f"{file}:{doc.line_of(known) or 1} {_field(shown)}: {message}"


def _is_type_tag(part: str) -> bool:
    return "[" in part or part in {"int", "float", "str", "bool", "none", "dict", "list", "tuple"}


def _cross_check(models: Sequence[ModelSpec]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Problems between entries: clashing names, cascades naming unknown or cascade stages."""
    owner: dict[str, str] = {}
    by_id = {spec.id: spec for spec in models}
    for index, spec in enumerate(models):
        for field_name, names in (("id", [spec.id]), ("aliases", spec.aliases)):
            for name in names:
                key = name.lower()
                if key in owner and owner[key] != spec.id:
                    yield (
                        ("models", index, field_name),
                        f"{name!r} is already used by model {owner[key]!r}",
                    )
                elif key in owner and field_name == "aliases":
                    yield (("models", index, field_name), f"{name!r} is listed twice")
                owner.setdefault(key, spec.id)
    lowered = {spec.id.lower(): spec for spec in models}
    for spec in models:
        for alias in spec.aliases:
            lowered.setdefault(alias.lower(), spec)
    for index, spec in enumerate(models):
        for stage_index, stage in enumerate(spec.stages):
            loc = ("models", index, "stages", stage_index, "model")
            target = lowered.get(stage.model.lower())
            if target is None:
                yield loc, f"unknown model {stage.model!r}; known: {', '.join(by_id)}"
            elif target.kind is ModelKind.CASCADE:
                yield loc, f"{stage.model!r} is itself a cascade; list its stages instead"
            else:
                try:
                    target.defaults.merged(stage.params)
                except ValidationError as error:
                    first = error.errors(include_url=False)[0]
                    yield (
                        ("models", index, "stages", stage_index, "params", *first["loc"]),
                        first["msg"],
                    )
