"""Instance selection for retrieval and the C-MOVE/C-GET SCP on SQLite, PostgreSQL, MariaDB.

The SCP runs in-process (``DicomService`` on a loopback socket) so every database kind is
exercised through the whole path: identifier → count → streamed SQL → sub-operations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsbox.archive.registry import AEEntry
from pacsbox.archive.retrieve import (
    RetrieveSelection,
    SelectionError,
    request_from_identifier,
)
from tests.helpers import dataset_bytes, free_port, make_ct

ALL = ("PATIENT", "STUDY", "SERIES", "IMAGE")
STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove


def _ingest(archive, tmp_path: Path, patient: str = "PAT001", series: int = 2, per: int = 3):  # noqa: ANN001, ANN202
    """A study with ``series`` series stored out of order; returns (study uid, {uid: file})."""
    study = generate_uid()
    files: dict[str, Path] = {}
    for s in reversed(range(series)):
        series_uid = generate_uid()
        for i in reversed(range(per)):
            ds = make_ct(study, series_uid, patient_id=patient, instance_number=i + 1)
            ds.SeriesNumber = s + 1
            path = tmp_path / f"{study[-6:]}_{s}_{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            archive.ingest.store_file(path)
            files[str(ds.SOPInstanceUID)] = path
    return study, files


def _ident(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _select(archive, ident: Dataset, levels=ALL) -> RetrieveSelection:  # noqa: ANN001
    return RetrieveSelection(
        archive.engine, archive.store.root, request_from_identifier(ident, levels)
    )


def test_selection_levels_order_and_lists(archive, tmp_path: Path) -> None:
    study, files = _ingest(archive, tmp_path)
    other, other_files = _ingest(archive, tmp_path, series=1, per=2)
    _ingest(archive, tmp_path, patient="SOMEONE-ELSE", series=1, per=1)

    sel = _select(archive, _ident("STUDY", StudyInstanceUID=study))
    assert sel.count() == 6
    items = list(sel.iter(batch=2))
    numbers = [(dcmread(i.path).SeriesNumber, dcmread(i.path).InstanceNumber) for i in items]
    assert numbers == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    for item in items:
        assert item.path.is_file() and item.size == item.path.stat().st_size
        assert item.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
        assert item.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert dataset_bytes(item.path) == dataset_bytes(files[item.sop_instance_uid])
    assert sel.sop_classes() == [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")]

    # a UID list of two studies, the patient level, series and image levels
    both = _select(archive, _ident("STUDY", StudyInstanceUID=[study, other]))
    assert both.count() == 8
    assert _select(archive, _ident("PATIENT", PatientID="PAT001")).count() == 8
    series_uid = str(dcmread(items[0].path).SeriesInstanceUID)
    assert _select(archive, _ident("SERIES", SeriesInstanceUID=series_uid)).count() == 3
    uids = [items[0].sop_instance_uid, items[4].sop_instance_uid]
    image = _select(archive, _ident("IMAGE", SOPInstanceUID=uids))
    assert [i.sop_instance_uid for i in image.iter()] == uids
    # hierarchical: the higher keys restrict; relational: they may be absent
    wrong = _ident("SERIES", StudyInstanceUID=other, SeriesInstanceUID=series_uid)
    assert _select(archive, wrong).count() == 0
    right = _ident("SERIES", StudyInstanceUID=study, SeriesInstanceUID=series_uid)
    assert _select(archive, right).count() == 3
    assert _select(archive, _ident("STUDY", StudyInstanceUID="1.2.3")).count() == 0
    assert len(other_files) == 2


@pytest.mark.parametrize(
    ("ident", "levels", "message"),
    [
        (_ident("STUDY"), ALL, "StudyInstanceUID is required"),
        (_ident("STUDY", StudyInstanceUID=""), ALL, "StudyInstanceUID is required"),
        (_ident("SERIES", StudyInstanceUID="1.2"), ALL, "SeriesInstanceUID is required"),
        (_ident("PATIENT", PatientID="P1"), ("STUDY", "SERIES", "IMAGE"), "not valid"),
        (_ident("FRAME", StudyInstanceUID="1.2"), ALL, "not valid"),
        (Dataset(), ALL, "Query/Retrieve Level (0008,0052) is missing"),
        (_ident("STUDY", StudyInstanceUID="1.2.*"), ALL, "wildcards"),
        (_ident("PATIENT", PatientID="SM*"), ALL, "wildcards"),
    ],
)
def test_identifier_errors(ident: Dataset, levels, message: str) -> None:  # noqa: ANN001
    with pytest.raises(SelectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        request_from_identifier(ident, levels)


# -- the SCP in-process, on every database ------------------------------------------------
@pytest.fixture
def service(archive):  # noqa: ANN001, ANN201
    from pacsbox.dicom.server import DicomService, bind_listener

    svc = DicomService(archive)
    sock = bind_listener("127.0.0.1", free_port())
    svc.serve(sock)
    svc.port = sock.getsockname()[1]  # type: ignore[attr-defined]
    archive.registry.add(AEEntry("PYSCU", "127.0.0.1", 104))
    yield svc
    svc.shutdown()
    sock.close()


class Receiver:
    """A pynetdicom Storage SCP that keeps the data set bytes it receives."""

    def __init__(self) -> None:
        self.received: dict[str, bytes] = {}
        self.ae = AE(ae_title="DEST")
        self.ae.add_supported_context(CTImageStorage)
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.on_store)],
        )

    def on_store(self, event) -> int:  # noqa: ANN001
        self.received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(
            include_meta=False
        )
        return 0

    def stop(self) -> None:
        self.server.shutdown()


def _move(
    port: int, ident: Dataset, dest: str = "DEST", model=StudyRootQueryRetrieveInformationModelMove
):  # noqa: ANN001, ANN202
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSBOX")
    assert assoc.is_established
    try:
        return [(s, i) for s, i in assoc.send_c_move(ident, dest, model) if "Status" in s]
    finally:
        assoc.release()


def test_move_scp_on_every_database(archive, service, tmp_path: Path) -> None:
    study, files = _ingest(archive, tmp_path)
    receiver = Receiver()
    try:
        archive.registry.add(AEEntry("DEST", "127.0.0.1", receiver.port))
        responses = _move(service.port, _ident("STUDY", StudyInstanceUID=study))
        final = responses[-1][0]
        assert final.Status == 0x0000
        assert final.NumberOfCompletedSuboperations == 6
        assert final.NumberOfFailedSuboperations == 0
        assert responses[0][0].Status == 0xFF00
        assert responses[0][0].NumberOfRemainingSuboperations == 6
        assert set(receiver.received) == set(files)
        for uid, path in files.items():
            assert receiver.received[uid] == dataset_bytes(path)
        # Patient Root at PATIENT level
        receiver.received.clear()
        responses = _move(
            service.port,
            _ident("PATIENT", PatientID="PAT001"),
            model=PatientRootQueryRetrieveInformationModelMove,
        )
        assert responses[-1][0].Status == 0x0000
        assert len(receiver.received) == 6
    finally:
        receiver.stop()


def test_get_scp_on_every_database(archive, service, tmp_path: Path) -> None:
    study, files = _ingest(archive, tmp_path, series=1, per=4)
    received: dict[str, bytes] = {}

    def on_store(event) -> int:  # noqa: ANN001
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(
            include_meta=False
        )
        return 0

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    # Explicit VR LE first: what pacsbox accepts for the context, so the files go as stored
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1",
        service.port,
        ae_title="PACSBOX",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    ident = _ident("STUDY", StudyInstanceUID=study)
    responses = [
        (s, i)
        for s, i in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)
        if "Status" in s
    ]
    assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 4
    assert set(received) == set(files)
    for uid, path in files.items():
        assert received[uid] == dataset_bytes(path)


def test_other_pynetdicom_aes_keep_the_stock_move_loop(tmp_path: Path) -> None:
    """install() only takes over when the bound handler is a RetrieveSCP: any other
    pynetdicom AE in the process (a test double, a tool) keeps pynetdicom's behaviour."""
    import pacsbox.dicom.scp.retrieve as retrieve_scp

    retrieve_scp.install()
    receiver = Receiver()
    ds = make_ct()

    def handle_move(event):  # noqa: ANN001, ANN202
        yield "127.0.0.1", receiver.port, {"contexts": [build_context(CTImageStorage)]}
        yield 1
        yield 0xFF00, ds

    scp = AE(ae_title="OTHER")
    scp.add_supported_context(STUDY_MOVE)
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_MOVE, handle_move)]
    )
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(STUDY_MOVE)
        assoc = ae.associate("127.0.0.1", port, ae_title="OTHER")
        ident = _ident("STUDY", StudyInstanceUID=ds.StudyInstanceUID)
        final = [s for s, _i in assoc.send_c_move(ident, "DEST", STUDY_MOVE) if "Status" in s]
        assoc.release()
    finally:
        server.shutdown()
        receiver.stop()
    assert final[-1].Status == 0x0000 and final[-1].NumberOfCompletedSuboperations == 1
    assert list(receiver.received) == [ds.SOPInstanceUID]


def test_higher_keys_universal_or_outside_the_model_are_ignored(archive, tmp_path: Path) -> None:
    study, _files = _ingest(archive, tmp_path, series=1, per=2)
    study_root = ("STUDY", "SERIES", "IMAGE")
    # Study Root: Patient ID is no unique key there, whatever its value
    ident = _ident("STUDY", StudyInstanceUID=study, PatientID="SOMEONE-ELSE")
    assert _select(archive, ident, study_root).count() == 2
    # Patient Root: a literal Patient ID restricts, a universal one does not
    assert _select(archive, _ident("STUDY", StudyInstanceUID=study, PatientID="X")).count() == 0
    assert _select(archive, _ident("STUDY", StudyInstanceUID=study, PatientID="*")).count() == 2
    same = _ident("STUDY", StudyInstanceUID=study, PatientID="PAT001")
    assert _select(archive, same).count() == 2
    # a key below the level does not narrow a STUDY retrieve
    below = _ident("STUDY", StudyInstanceUID=study, SOPInstanceUID="1.2.3")
    assert _select(archive, below).count() == 2


def test_storage_requestor_fragments_and_refusals(tmp_path: Path) -> None:
    """The lean C-STORE requestor against pynetdicom: small peer PDUs, no context, no peer."""
    from pacsbox.dicom.storage_requestor import (
        AssociationFailed,
        StorageRequestor,
        encode_store_rq,
    )

    ds = make_ct(rows=64, cols=64)
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    receiver = Receiver()
    receiver.ae.maximum_pdu_size = 4096  # many P-DATA fragments per data set
    receiver.stop()
    receiver.server = receiver.ae.start_server(
        ("127.0.0.1", receiver.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, receiver.on_store)],
    )
    ct = "1.2.840.10008.5.1.4.1.1.2"
    try:
        req = StorageRequestor(
            "127.0.0.1", receiver.port, "DEST", "PACSBOX", [(ct, ["1.2.840.10008.1.2.1"])]
        )
        accepted = req.associate()
        assert req.peer_max_pdu == 4096
        with open(path, "rb") as fh:
            from pacsbox.archive.transcode import dataset_offset

            offset = dataset_offset(fh)
            size = path.stat().st_size - offset
            command = encode_store_rq(1, ct, str(ds.SOPInstanceUID))
            result = req.store_file(accepted[0].context_id, command, fh, offset, size)
        assert result.status == 0
        req.release()
        assert receiver.received[str(ds.SOPInstanceUID)] == dataset_bytes(path)
        mr = "1.2.840.10008.5.1.4.1.1.4"  # not supported by the receiver
        with pytest.raises(AssociationFailed, match="accepted no presentation context"):
            StorageRequestor(
                "127.0.0.1", receiver.port, "DEST", "PACSBOX", [(mr, ["1.2.840.10008.1.2"])]
            ).associate()
    finally:
        receiver.stop()
    with pytest.raises(AssociationFailed, match="cannot connect"):
        StorageRequestor(
            "127.0.0.1", free_port(), "DEST", "PACSBOX", [(ct, ["1.2.840.10008.1.2"])]
        ).associate()
