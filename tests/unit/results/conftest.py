"""Fixtures: module-scoped phantom cases (written once per test module)."""

from __future__ import annotations

import pytest

from ainode.phantoms import Geometry

from .cases import Case, ge_gap_geometry, make_case, oblique_geometry


@pytest.fixture(scope="module")
def axial_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("axial"), Geometry(shape=(24, 48, 48)), shuffle=False)


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("oblique"), oblique_geometry(), seed=3)


@pytest.fixture(scope="module")
def ge_gap_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Tilted, 7.07 mm apart, SpacingBetweenSlices 2.07 (the gap, as older GE MR writes it)."""
    return make_case(
        tmp_path_factory.mktemp("ge-gap"),
        ge_gap_geometry(),
        seed=5,
        header={"SliceThickness": "5", "SpacingBetweenSlices": "2.07"},
    )


@pytest.fixture(params=["axial", "oblique", "ge_gap"])
def case(request: pytest.FixtureRequest) -> Case:
    chosen: Case = request.getfixturevalue(f"{request.param}_case")
    return chosen
