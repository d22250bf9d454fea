"""orthanc_session: a request whose connection the server drops unanswered is sent again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from httppeer import ScriptedPeer

from ainode.http import orthanc_session


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ScriptedPeer]:
    srv = ScriptedPeer([0] * request.param + [200])  # drops the first ones
    yield srv
    srv.close()


@pytest.mark.parametrize("server", [1], indirect=True)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_dropped_request_is_sent_again(server: ScriptedPeer, method: str) -> None:
    answer = orthanc_session().request(method, f"http://127.0.0.1:{server.port}/x", data=b"{}")
    assert (answer.status_code, answer.text) == (200, "ok")
    assert server.requests == [f"{method} /x HTTP/1.1".encode()] * 2


@pytest.mark.parametrize("server", [2], indirect=True)
def test_only_once(server: ScriptedPeer) -> None:
    """A server that keeps dropping is down: the caller hears of it after the second try."""
    with pytest.raises(requests.ConnectionError):
        orthanc_session().get(f"http://127.0.0.1:{server.port}/x")
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [1], indirect=True)
def test_a_plain_session_does_not_retry(server: ScriptedPeer) -> None:
    """The case the helper exists for: without it the first dropped request is an error."""
    with pytest.raises(requests.ConnectionError):
        requests.Session().get(f"http://127.0.0.1:{server.port}/x")
