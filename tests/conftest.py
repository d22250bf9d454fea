"""Fixtures shared by the whole suite: real nodes and phantom series on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nodeharness import Node, start_node, write_rules

from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series

TESTS = Path(__file__).parent
# Marks by folder, so a new test file is marked by where it lives: tests/unit start no node.
FOLDER_MARKS = {"integration": ("integration",), "browser": ("browser", "integration")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        for mark in FOLDER_MARKS.get(folder, ()):
            item.add_marker(mark)
    # Whole files, in their order: those with a test marked slow first, then those that start
    # nodes, then tests/unit. With `make test`'s parallel workers (files handed out in this
    # order, --no-loadscope-reorder) a long file started last would be the run's tail; short
    # unit files fill it instead.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(
        key=lambda item: (
            item.path not in slow_files,
            item.get_closest_marker("integration") is None,
        )
    )


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One real node shared by the tests that only read from it or add their own series.

    Its rules route nothing, so no result series appears while a test counts instances.
    """
    folder = tmp_path_factory.mktemp("node")
    rules = write_rules(folder / "rules.yaml", "version: 1\nmode: first-match\nrules: []\n")
    started = start_node(folder / "node", routing_rules=rules)
    yield started
    started.stop()


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[Node]:
    """A node of the test's own, for tests that stop, kill or reconfigure parts of it."""
    started = start_node(tmp_path / "node")
    yield started
    started.stop()


@pytest.fixture
def phantom_series(tmp_path: Path) -> list[Path]:
    """A small CT phantom series (24 slices) with new UIDs, written one file per slice."""
    phantom = make_phantom(Geometry(shape=(24, 48, 48), spacing=(3.0, 1.0, 1.0)), seed=3)
    return write_series(phantom, tmp_path / "series", SeriesIds())
