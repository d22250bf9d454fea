"""send_to_destinations: per-destination status, backoff, and retries of the failed ones only."""

from __future__ import annotations

from pathlib import Path

import pytest
from ainode_worker.destinations import (
    RetryPolicy,
    pending_statuses,
    send_to_destinations,
)
from dicompeers import PASSWORD, USER, OrthancServer, StoreScp, start_storescp, stop
from nodeharness import free_port

from ainode.jobs import Destination, DestinationKind
from ainode.settings import DicomWebServer, RemoteModality, Settings

POLICY = RetryPolicy(rounds=3, first_delay_s=0.5, factor=2.0)


def _settings(tmp_path: Path, orthanc: OrthancServer, modalities: dict[str, int]) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        orthanc_url=orthanc.url,
        orthanc_username=USER,
        orthanc_password=PASSWORD,
        dicom_aet="AINODETEST",
        remote_modalities={
            name: RemoteModality(aet="STORESCP", host="127.0.0.1", port=port)
            for name, port in modalities.items()
        },
        dicomweb_servers={
            "archive": DicomWebServer(
                url=f"{orthanc.url}/dicom-web", username=USER, password=PASSWORD
            ),
            "bad-login": DicomWebServer(
                url=f"{orthanc.url}/dicom-web", username=USER, password="wrong"
            ),
        },
    )


def test_down_destination_is_retried_then_sent_alone(
    orthanc: OrthancServer, storescp: StoreScp, result_files: list[Path], tmp_path: Path
) -> None:
    down_port = free_port()  # the PACS is down: nothing listens here yet
    settings = _settings(tmp_path, orthanc, {"up": storescp.port, "down": down_port})
    destinations = [
        Destination(kind=DestinationKind.ORTHANC),
        Destination(kind=DestinationKind.DICOM, name="up"),
        Destination(kind=DestinationKind.DICOM, name="down"),
        Destination(kind=DestinationKind.DICOMWEB, name="archive"),
    ]
    waits: list[float] = []
    first = send_to_destinations(
        result_files, pending_statuses(destinations), settings, policy=POLICY, sleep=waits.append
    )
    states = {s.destination.name: s for s in first.statuses}
    assert [states[n].state for n in ("local", "up", "archive")] == ["sent"] * 3
    assert all(states[n].attempts == 1 for n in ("local", "up", "archive"))
    down = states["down"]
    assert down.state == "failed"
    assert down.attempts == 3
    assert down.error is not None and "unreachable" in down.error
    assert waits == [0.5, 1.0]  # backoff between rounds, only while something failed
    assert len(first.orthanc_instance_ids) == len(result_files)
    assert not first.all_sent
    assert [s.destination.name for s in first.failed] == ["down"]
    assert len(storescp.received()) == len(result_files)

    # Later (the job is retried): the PACS is back; only it receives the files.
    late = start_storescp(tmp_path / "late", down_port)
    try:
        second = send_to_destinations(
            result_files, first.statuses, settings, policy=POLICY, sleep=waits.append
        )
        assert second.all_sent
        again = {s.destination.name: s for s in second.statuses}
        assert again["down"].attempts == 4 and again["down"].error is None
        assert all(again[n] == states[n] for n in ("local", "up", "archive"))
        assert len(late.received()) == len(result_files)
        assert len(storescp.received()) == len(result_files)  # +uf: a re-send would add files
        assert second.orthanc_instance_ids == []  # Orthanc was not sent to again
        assert waits == [0.5, 1.0]  # no failure, no wait
    finally:
        stop(late.process)


def test_refusal_is_not_retried_and_others_succeed(
    orthanc: OrthancServer, result_files: list[Path], tmp_path: Path
) -> None:
    settings = _settings(tmp_path, orthanc, {})
    destinations = [
        Destination(kind=DestinationKind.DICOMWEB, name="bad-login"),
        Destination(kind=DestinationKind.DICOM, name="not-configured"),
        Destination(kind=DestinationKind.ORTHANC),
    ]
    waits: list[float] = []
    outcome = send_to_destinations(
        result_files, pending_statuses(destinations), settings, policy=POLICY, sleep=waits.append
    )
    bad_login, unknown, local = outcome.statuses
    assert (bad_login.state, bad_login.attempts) == ("failed", 1)
    assert bad_login.error is not None and "401" in bad_login.error
    assert (unknown.state, unknown.attempts) == ("failed", 1)
    assert unknown.error is not None and "no remote modality named" in unknown.error
    assert local.state == "sent"
    assert waits == []  # nothing retriable failed: no backoff


def test_missing_result_files_are_an_error(orthanc: OrthancServer, tmp_path: Path) -> None:
    settings = _settings(tmp_path, orthanc, {})
    statuses = pending_statuses([Destination(kind=DestinationKind.ORTHANC)])
    with pytest.raises(FileNotFoundError, match="result files are gone"):
        send_to_destinations([tmp_path / "nope.dcm"], statuses, settings)
