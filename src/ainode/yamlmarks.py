"""YAML loading that remembers where each value was written, so errors can name its line.

Shared by the two files people edit by hand, the routing rules and the model registry. PyYAML's
node tree carries a start mark for every key and value; we walk it once, recording the line of
each path (``("rules", 0, "when", "Modality")``), then build plain Python data from the same
tree. Only ``SafeLoader`` constructs are allowed, and every way a hostile or mistyped file can
fail (not UTF-8, too large, bad syntax, an explicit tag with a bad value, a key written twice,
recursive or exponentially expanding aliases, absurd nesting) ends as a
:class:`YamlDocumentError` listing its problems, never another exception. Each caller turns
those problems into its own error type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Location = tuple[str | int, ...]

# Both files list a few dozen entries; these limits only stop pathological input.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 20_000  # values in the document, an alias counted at every use
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YamlProblem:
    """One thing wrong with a document: its 1-based line (None: the whole file) and path."""

    line: int | None
    location: Location
    message: str


class YamlDocumentError(ValueError):
    """The document could not be read; ``problems`` lists everything found."""

    def __init__(self, problems: Sequence[YamlProblem]) -> None:
        self.problems: tuple[YamlProblem, ...] = tuple(problems)
        super().__init__("; ".join(problem.message for problem in self.problems))


class _MarkedLoader(yaml.SafeLoader):
    """A SafeLoader whose scalar constructors fail only with YAML errors; dates stay text."""


def _guarded(constructor: Callable[[Any, Node], Any]) -> Callable[[Any, Node], Any]:
    def construct(loader: Any, node: Node) -> Any:
        try:
            return constructor(loader, node)
        except (ValueError, LookupError, TypeError, ArithmeticError) as error:
            raise ConstructorError(
                None, None, f"cannot read {node.value!r} as {node.tag}: {error}", node.start_mark
            ) from error

    return construct


for _tag in ("null", "bool", "int", "float", "binary"):
    _full_tag = f"tag:yaml.org,2002:{_tag}"
    _MarkedLoader.add_constructor(_full_tag, _guarded(yaml.SafeLoader.yaml_constructors[_full_tag]))


def _timestamp_as_text(loader: yaml.SafeLoader, node: Node) -> Any:
    """Dates are never needed by these files; as text they cannot fail on "2024-13-45"."""
    if not isinstance(node, ScalarNode):
        raise ConstructorError(None, None, "expected a date", node.start_mark)
    return loader.construct_scalar(node)


_MarkedLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


@dataclass(frozen=True)
class MarkedDocument:
    """Plain YAML data plus the line (1-based) where each path's key or value was written."""

    data: Any
    key_lines: dict[Location, int] = field(default_factory=dict)
    value_lines: dict[Location, int] = field(default_factory=dict)

    def written_part(self, location: Sequence[Any]) -> Location:
        """The longest leading part of ``location`` that was written in the document."""
        loc: Location = tuple(path_part(part) for part in location)
        while loc and loc not in self.key_lines and loc not in self.value_lines:
            loc = loc[:-1]
        return loc

    def line_of(self, location: Sequence[Any]) -> int | None:
        """The line of ``location``, or of its nearest enclosing path that was written.

        A missing field thus points at the mapping that lacks it, an unknown field at its key.
        """
        loc = self.written_part(location)
        if loc in self.key_lines:
            return self.key_lines[loc]
        return self.value_lines.get(loc)


def path_part(part: Any) -> str | int:
    """A location part as the document's paths hold it: a key's text or a list index."""
    if isinstance(part, bool) or not isinstance(part, str | int):
        return str(part)
    return part


def decode_document(raw: bytes, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The text of a file's bytes, refusing oversize and non-UTF-8 content."""
    if len(raw) > max_bytes:
        raise YamlDocumentError(
            [YamlProblem(None, (), f"the file is larger than {max_bytes} bytes")]
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise YamlDocumentError(
            [YamlProblem(line, (), "the file is not UTF-8 text (save it as UTF-8)")]
        ) from error


def load_marked(text: str, what: str = "a rules file") -> MarkedDocument:
    """Parse one YAML document, keeping line marks; raises :class:`YamlDocumentError`.

    ``what`` names the kind of file in messages about absurd size ("... is never that large").
    """
    try:
        loader = _MarkedLoader(text)
    except yaml.reader.ReaderError as error:  # a character YAML does not allow
        line = text[: error.position].count("\n") + 1
        raise YamlDocumentError(
            [YamlProblem(line, (), f"not valid YAML: {error.reason}")]
        ) from error
    try:
        node = loader.get_single_node()
        if node is None:
            return MarkedDocument(data=None)
        _check_size(node, what)
        key_lines: dict[Location, int] = {}
        value_lines: dict[Location, int] = {}
        problems: list[YamlProblem] = []
        _walk(loader, node, (), key_lines, value_lines, set(), problems)
        if problems:
            raise YamlDocumentError(problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        raise YamlDocumentError([_yaml_problem(error)]) from error
    except yaml.YAMLError as error:
        raise YamlDocumentError([YamlProblem(None, (), f"not valid YAML: {error}")]) from error
    except RecursionError as error:
        raise YamlDocumentError(
            [YamlProblem(None, (), f"the YAML is nested far too deeply to be {what}")]
        ) from error
    finally:
        loader.dispose()
    return MarkedDocument(data=data, key_lines=key_lines, value_lines=value_lines)


def _yaml_problem(error: yaml.MarkedYAMLError) -> YamlProblem:
    mark = error.problem_mark or error.context_mark
    parts = [part for part in (error.context, error.problem) if part]
    text = "; ".join(parts) if parts else str(error)
    return YamlProblem(mark.line + 1 if mark else None, (), f"not valid YAML: {text}")


def _check_size(root: Node, what: str) -> None:
    """Refuse recursive aliases and documents whose aliases expand beyond :data:`MAX_NODES`."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def measure(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlDocumentError(
                [YamlProblem(node.start_mark.line + 1, (), "an alias refers to itself (recursive)")]
            )
        active.add(key)
        total = 1
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                total += measure(key_node) + measure(value_node)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                total += measure(item)
        if total > MAX_NODES:
            raise YamlDocumentError(
                [
                    YamlProblem(
                        node.start_mark.line + 1,
                        (),
                        f"the document expands to more than {MAX_NODES} values "
                        f"(aliases counted at each use); {what} is never that large",
                    )
                ]
            )
        active.discard(key)
        sizes[key] = total
        return total

    measure(root)


def _walk(
    loader: _MarkedLoader,
    node: Node,
    path: Location,
    key_lines: dict[Location, int],
    value_lines: dict[Location, int],
    seen: set[int],
    problems: list[YamlProblem],
) -> None:
    value_lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in seen:  # an alias: its lines were recorded where the anchor was written
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first_line: dict[str | int, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # complex keys fail at construction; merges have no path of their own
            key = path_part(loader.construct_object(key_node))
            line = key_node.start_mark.line + 1
            if key in first_line:
                problems.append(
                    YamlProblem(
                        line,
                        (*path, key),
                        f"duplicate key: {key!r} is written twice in the same mapping (first on "
                        f"line {first_line[key]}); YAML would silently keep only the last one",
                    )
                )
                continue
            first_line[key] = line
            child = (*path, key)
            key_lines.setdefault(child, line)
            _walk(loader, value_node, child, key_lines, value_lines, seen, problems)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _walk(loader, item, (*path, index), key_lines, value_lines, seen, problems)
