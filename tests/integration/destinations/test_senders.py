"""Each destination type against a real peer: Orthanc REST, Orthanc DICOMweb, dcmtk storescp."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.destinations import DestinationError, make_sender
from ainode_worker.destinations.dicom import DicomSender, open_association
from dicompeers import (
    ORTHANC_AET,
    PASSWORD,
    USER,
    OrthancServer,
    StorageSCP,
    StoreScp,
    free_port,
    start_storescp,
    stop,
)
from pynetdicom import build_context

from ainode.jobs import Destination, DestinationKind
from ainode.settings import DicomWebServer, RemoteModality, Settings


def settings_for(
    tmp_path: Path,
    orthanc: OrthancServer | None = None,
    *,
    password: str = PASSWORD,
    modalities: dict[str, RemoteModality] | None = None,
) -> Settings:
    url = orthanc.url if orthanc else f"http://127.0.0.1:{free_port()}"
    return Settings(
        data_dir=tmp_path / "var",
        orthanc_url=url,
        orthanc_username=USER,
        orthanc_password=password,
        dicom_aet="AINODETEST",
        remote_modalities=modalities or {},
        dicomweb_servers={
            "archive": DicomWebServer(url=f"{url}/dicom-web", username=USER, password=password)
        },
    )


def _uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def test_orthanc_rest_store(
    orthanc: OrthancServer, result_files: list[Path], tmp_path: Path
) -> None:
    sender = make_sender(Destination(kind=DestinationKind.ORTHANC), settings_for(tmp_path, orthanc))
    ids = sender.send(result_files)
    assert len(ids) == len(result_files)
    for uid, orthanc_id in zip(_uids(result_files), ids, strict=True):
        assert orthanc.find_instance(uid) == [orthanc_id]
    assert sender.send(result_files) == ids  # stored again: the same single copies


def test_orthanc_wrong_password_is_not_retriable(
    orthanc: OrthancServer, result_files: list[Path], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, orthanc, password="wrong")
    with pytest.raises(DestinationError, match="401") as caught:
        make_sender(Destination(kind=DestinationKind.ORTHANC), settings).send(result_files)
    assert caught.value.retriable is False


def test_orthanc_down_is_retriable(result_files: list[Path], tmp_path: Path) -> None:
    settings = settings_for(tmp_path)  # nothing listens on that port
    with pytest.raises(DestinationError, match="unreachable") as caught:
        make_sender(Destination(kind=DestinationKind.ORTHANC), settings).send(result_files)
    assert caught.value.retriable is True


def test_dicomweb_stow(orthanc: OrthancServer, result_files: list[Path], tmp_path: Path) -> None:
    destination = Destination(kind=DestinationKind.DICOMWEB, name="archive")
    sent = make_sender(destination, settings_for(tmp_path, orthanc)).send(result_files)
    assert sent == _uids(result_files)
    for uid in sent:
        assert len(orthanc.find_instance(uid)) == 1


def test_dicomweb_wrong_password_and_unknown_server(
    orthanc: OrthancServer, result_files: list[Path], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, orthanc, password="wrong")
    with pytest.raises(DestinationError, match="401") as caught:
        make_sender(Destination(kind=DestinationKind.DICOMWEB, name="archive"), settings).send(
            result_files
        )
    assert caught.value.retriable is False
    with pytest.raises(DestinationError, match="no DICOMweb server named 'nope'") as unknown:
        make_sender(Destination(kind=DestinationKind.DICOMWEB, name="nope"), settings)
    assert unknown.value.retriable is False


def test_cstore_to_storescp(storescp: StoreScp, result_files: list[Path], tmp_path: Path) -> None:
    modality = RemoteModality(aet="STORESCP", host="127.0.0.1", port=storescp.port)
    settings = settings_for(tmp_path, modalities={"pacs": modality})
    sent = make_sender(Destination(kind=DestinationKind.DICOM, name="pacs"), settings).send(
        result_files
    )
    assert sent == _uids(result_files)
    received = {str(ds.SOPInstanceUID): ds for ds in storescp.received()}
    assert set(received) == set(sent)
    for path in result_files:
        original = pydicom.dcmread(path)
        copy = received[str(original.SOPInstanceUID)]
        assert copy.SOPClassUID == original.SOPClassUID
        if "PixelData" in original:  # SEG frames arrive intact, whatever the transfer syntax
            assert np.array_equal(copy.pixel_array, original.pixel_array)
    # storescp by default accepts only uncompressed syntaxes: the RLE LABELMAP was decompressed
    labelmap = next(ds for ds in received.values() if ds.get("SegmentationType") == "LABELMAP")
    assert not labelmap.file_meta.TransferSyntaxUID.is_compressed


def test_cstore_keeps_rle_when_accepted(tmp_path: Path, result_files: list[Path]) -> None:
    scp = start_storescp(tmp_path / "rle", free_port(), "+xr")  # prefer RLE lossless
    try:
        modality = RemoteModality(aet="STORESCP", host="127.0.0.1", port=scp.port)
        settings = settings_for(tmp_path, modalities={"pacs": modality})
        make_sender(Destination(kind=DestinationKind.DICOM, name="pacs"), settings).send(
            result_files
        )
        labelmap = next(ds for ds in scp.received() if ds.get("SegmentationType") == "LABELMAP")
        assert labelmap.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    finally:
        stop(scp.process)


def test_cstore_refusals_are_not_retriable(
    orthanc: OrthancServer, result_files: list[Path], tmp_path: Path
) -> None:
    wrong_aet = RemoteModality(aet="NOT-ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)
    right_aet = RemoteModality(aet=ORTHANC_AET, host="127.0.0.1", port=orthanc.dicom_port)
    settings = settings_for(tmp_path, modalities={"wrong": wrong_aet, "orthanc": right_aet})
    with pytest.raises(DestinationError, match="rejected the association") as rejected:
        make_sender(Destination(kind=DestinationKind.DICOM, name="wrong"), settings).send(
            result_files
        )
    assert rejected.value.retriable is False
    # Orthanc 1.10 (DCMTK 3.6.7) predates Label Map Segmentation Storage: refused, for good.
    labelmap = [p for p in result_files if p.name.startswith("seg_labelmap")]
    with pytest.raises(DestinationError, match="does not accept") as refused:
        make_sender(Destination(kind=DestinationKind.DICOM, name="orthanc"), settings).send(
            labelmap
        )
    assert refused.value.retriable is False
    with pytest.raises(DestinationError, match="no remote modality named 'gone'"):
        make_sender(Destination(kind=DestinationKind.DICOM, name="gone"), settings)


def test_wrong_called_aet_is_a_rejection_every_time(orthanc: OrthancServer) -> None:
    """Orthanc rejects at once; pynetdicom alone reported some of these as aborts (retried)."""
    peer = RemoteModality(aet="NOT-ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)
    contexts = [build_context(pydicom.uid.SegmentationStorage)]
    for _ in range(40):  # the race showed in about 1 request of 15
        assoc = open_association(peer, "AINODETEST", contexts)
        assert assoc.is_rejected and not assoc.is_established


def test_cstore_to_nothing_is_retriable(result_files: list[Path], tmp_path: Path) -> None:
    modality = RemoteModality(aet="PACS", host="127.0.0.1", port=free_port())
    settings = settings_for(tmp_path, modalities={"pacs": modality})
    with pytest.raises(DestinationError, match="unreachable") as caught:
        make_sender(Destination(kind=DestinationKind.DICOM, name="pacs"), settings).send(
            result_files
        )
    assert caught.value.retriable is True


def test_association_socket_has_nagle_off(storescp: StoreScp) -> None:
    peer = RemoteModality(aet="STORESCP", host="127.0.0.1", port=storescp.port)
    contexts = [build_context(pydicom.uid.SegmentationStorage)]
    assoc = open_association(peer, "AINODETEST", contexts)
    assert assoc.is_established
    try:
        transport = assoc.dul.socket
        assert transport is not None and transport.socket is not None
        assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def _silent_peer_sender(
    result_files: list[Path], tmp_path: Path, stalls: int
) -> tuple[StorageSCP, DicomSender]:
    """A peer whose first ``stalls`` C-STOREs get no answer, and a sender that waits 5 s for one."""
    sop_classes = sorted({str(pydicom.dcmread(path).SOPClassUID) for path in result_files})
    peer = StorageSCP(
        [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian],
        stalls=stalls,
        sop_classes=sop_classes,
    )
    modality = RemoteModality(aet="PEER", host="127.0.0.1", port=peer.port)
    settings = settings_for(tmp_path, modalities={"pacs": modality})
    sender = make_sender(Destination(kind=DestinationKind.DICOM, name="pacs"), settings)
    assert isinstance(sender, DicomSender)
    sender.dimse_timeout_s = 5.0
    return peer, sender


def test_an_unanswered_cstore_is_sent_again_on_a_new_association(
    result_files: list[Path], tmp_path: Path
) -> None:
    """As when pynetdicom's reactor thread takes a C-STORE response ("Received unexpected C-STORE
    service message"): no answer to the first file. The association is aborted and every file
    from that one on is sent on a second; nothing is lost."""
    peer, sender = _silent_peer_sender(result_files, tmp_path, stalls=1)
    try:
        sent = sender.send(result_files)
    finally:
        peer.stop()
    assert sent == _uids(result_files)
    assert set(peer.received) == set(sent), "a file of the unanswered association was lost"
    assert peer.associations == 2


def test_a_peer_that_never_answers_a_cstore_is_retriable(
    result_files: list[Path], tmp_path: Path
) -> None:
    peer, sender = _silent_peer_sender(result_files, tmp_path, stalls=2)
    try:
        with pytest.raises(DestinationError, match="did not answer a C-STORE on 2") as caught:
            sender.send(result_files)
    finally:
        peer.stop()
    assert caught.value.retriable is True
    assert "0 of 4 instances sent" in str(caught.value)
    assert peer.associations == 2 and peer.received == {}
