"""The interactive service checks the login itself, so no process can skip the door."""

from __future__ import annotations

import base64

import pytest
from ainode_worker.interactive import create_app
from ainode_worker.interactive.auth import credentials_match
from ainode_worker.interactive.config import InteractiveConfig
from fastapi.testclient import TestClient

from ainode.settings import Settings

USERS = {"ainode": "s3cret"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(InteractiveConfig(store_accepted=False, users=USERS)))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/sessions"),
        ("POST", "/segment"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/monailabel/info/"),
        ("POST", "/monailabel/infer/x"),
    ],
)
def test_every_route_wants_the_login(client: TestClient, method: str, path: str) -> None:
    for auth in (None, ("ainode", "wrong"), ("other", "s3cret")):
        answer = client.request(method, path, auth=auth)
        assert answer.status_code == 401, (path, auth)
        assert answer.headers["www-authenticate"].startswith("Basic realm=")
    assert client.get("/health", auth=("ainode", "s3cret")).status_code == 200


def test_malformed_authorization_headers_are_refused() -> None:
    for header in (b"", b"Basic", b"Basic !!!", b"Bearer abc", b"Basic " + base64.b64encode(b"x")):
        assert not credentials_match(header, USERS)
    assert credentials_match(b"basic " + base64.b64encode(b"ainode:s3cret"), USERS)


def test_monailabel_token_routes(client: TestClient) -> None:
    assert client.get("/monailabel/auth/").json() == {"enabled": True}
    wrong = client.post("/monailabel/auth/token", data={"username": "ainode", "password": "x"})
    assert wrong.status_code == 401
    token = client.post("/monailabel/auth/token", data={"username": "ainode", "password": "s3cret"})
    assert token.json()["token_type"] == "Basic"
    header = {"Authorization": f"Basic {token.json()['access_token']}"}
    assert client.get("/sessions", headers=header).status_code == 200


def test_the_node_login_is_required_only_when_auth_is_on() -> None:
    on = InteractiveConfig.from_settings(
        Settings(orthanc_username="u", orthanc_password="p", auth_enabled=True)
    )
    assert on.users == {"u": "p"}
    off = InteractiveConfig.from_settings(Settings(auth_enabled=False))
    assert off.users == {}
    assert TestClient(create_app(off)).get("/health").status_code == 200
