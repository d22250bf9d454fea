"""Fixtures: module-scoped phantom cases (written once per test module)."""

from __future__ import annotations

import pytest

from ainode.phantoms import Geometry

from .cases import Case, make_case, oblique_geometry


@pytest.fixture(scope="module")
def axial_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("axial"), Geometry(shape=(24, 48, 48)), shuffle=False)


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("oblique"), oblique_geometry(), seed=3)


@pytest.fixture(params=["axial", "oblique"])
def case(request: pytest.FixtureRequest) -> Case:
    chosen: Case = request.getfixturevalue(f"{request.param}_case")
    return chosen
