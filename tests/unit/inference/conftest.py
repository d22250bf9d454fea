"""Shared fixtures: the repository registry, one backend cache per session, phantom volumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from ainode_worker.inference.pipeline import BackendCache
from ainode_worker.volume import Volume

from ainode.phantoms import Phantom
from ainode.registry import Registry, load_registry
from ainode.settings import REPO_ROOT

from .helpers import phantom_volume


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(REPO_ROOT / "configs" / "models.yaml")


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> BackendCache:
    return BackendCache(tmp_path_factory.mktemp("node-data"))


@pytest.fixture(scope="session")
def phantom() -> tuple[Phantom, Volume]:
    """The 48x64x64 default-geometry phantom with spheres and a box, unseen in training."""
    return phantom_volume()


@pytest.fixture(scope="session")
def demo_model_folder() -> Path:
    return REPO_ROOT / "sample-data" / "models" / "demo-phantom-nnunet"
