"""Readers for the deployment files, written for the tests (no Docker engine is needed).

Compose's variable syntax, Dockerfile instructions and ``.dockerignore`` patterns are read the
way Docker reads them, restricted to the forms this repository uses; anything else is reported
rather than guessed at.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ainode.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / "docker" / "env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; $$ is a "$".
_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_ESCAPED_DOLLAR = "\0"


class MissingVariableError(KeyError):
    """A ``${NAME:?message}`` variable has no value, as ``docker compose`` would report."""


@dataclass(frozen=True)
class Reference:
    name: str
    operator: str | None  # None, ":-", "-", ":?", "?"
    argument: str

    @property
    def required(self) -> bool:
        return self.operator in (":?", "?")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def references(text: str) -> list[Reference]:
    """The ``${...}`` references in a string (escaped ``$$`` excluded)."""
    return [
        Reference(m["name"], m["op"], m["arg"] or "")
        for m in _REFERENCE.finditer(text.replace("$$", _ESCAPED_DOLLAR))
    ]


def is_single_reference(text: str) -> bool:
    """True when the whole value is one ``${...}`` reference."""
    return _REFERENCE.fullmatch(text.strip()) is not None


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Substitute ``${...}`` as compose does; an unset required variable raises."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match["name"], match["op"], match["arg"] or ""
        value = environ.get(name)
        # With a colon, empty counts as unset (compose's rule, as in the shell).
        missing = not value if operator in (":-", ":?") else value is None
        if operator in (":?", "?") and missing:
            raise MissingVariableError(f"{name}: {argument}")
        if operator in (":-", "-") and missing:
            return argument
        return value or ""

    escaped = text.replace("$$", _ESCAPED_DOLLAR)
    return _REFERENCE.sub(substitute, escaped).replace(_ESCAPED_DOLLAR, "$")


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a YAML tree, with its dotted location."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")


def split_outside_references(text: str, separator: str = ":") -> list[str]:
    """Split on ``separator`` except inside ``${...}`` (whose defaults may contain it)."""
    parts, current, depth = [], "", 0
    for char in text:
        if char == "{" and current.endswith("$"):
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping (list form ``NAME=value`` accepted)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def env_example() -> tuple[dict[str, str], set[str]]:
    """``docker/env.example``: the variables set (name to value) and those shown commented."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#?)([A-Z_][A-Z0-9_]*)=(.*)", line.strip())
        if match is None:
            continue
        if match[1]:
            commented.add(match[2])
        else:
            active[match[2]] = match[3]
    return active, commented


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def copy_sources(instruction: Instruction) -> list[str] | None:
    """Build-context sources of a COPY/ADD; None for ``--from`` (another stage or image)."""
    arguments = instruction.arguments
    exec_form = arguments.lstrip().startswith("[")
    words: list[str] = json.loads(arguments) if exec_form else shlex.split(arguments)
    flags = [w for w in words if w.startswith("--")]
    if any(flag.startswith("--from=") for flag in flags):
        return None
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"line {instruction.line}: {instruction.keyword} needs source and dest"
    return paths[:-1]


def dockerignore_patterns() -> list[str]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert not line.startswith("!"), "exceptions (!) are not read by these tests"
            patterns.append(line.strip("/"))
    return patterns


def is_ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``relative`` (a path in the context) or a folder above it."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(
                candidate.rsplit("/", 1)[-1], pattern[3:]
            ):
                return True
    return False
