"""C-MOVE / C-GET SCP against DCMTK movescu, getscu and storescp (PS3.4 C.4.2, C.4.3; SPEC B3/B4).

pacsbox runs as a real ``pacsbox serve`` process; the destination is a DCMTK storescp started
here (bit-preserving, so what arrives is exactly the data set bytes pacsbox sent) and
registered in pacsbox's AE registry.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsbox.archive.registry import AEEntry
from tests.helpers import (
    PYDICOM_TEST_FILES,
    Server,
    dataset_bytes,
    dcmtk_env,
    free_port,
    have,
    make_ct,
    open_server_archive,
    run_dcmtk,
    server_env,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not all(have(f"/usr/bin/{t}") for t in ("movescu", "getscu", "storescp")),
        reason="DCMTK movescu/getscu/storescp not installed",
    ),
]

CT = "1.2.840.10008.5.1.4.1.1.2"


class StoreSCP:
    """A DCMTK storescp started by a test (stopped by PID)."""

    def __init__(self, folder: Path, *args: str, aet: str = "DEST") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aet = aet
        self.log = folder.parent / f"storescp-{self.port}.log"
        self.proc = subprocess.Popen(
            ["/usr/bin/storescp", "-od", str(folder), "-aet", aet, "+B", "-dhl", *args]
            + [str(self.port)],
            env=dcmtk_env(),
            stdout=open(self.log, "wb"),  # noqa: SIM115 - kept open for the child
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator:
    started: list[StoreSCP] = []

    def factory(*args: str, name: str = "dest", aet: str | None = None) -> StoreSCP:
        scp = StoreSCP(tmp_path / name, *args, aet=aet or _title("D"))
        started.append(scp)
        return scp

    yield factory
    for scp in started:
        scp.stop()


@pytest.fixture(scope="module")
def shared_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One pacsbox server for the module (starting one costs seconds); tests use fresh UIDs
    and fresh AE titles, so they do not see each other's data or registry entries."""
    base = tmp_path_factory.mktemp("pacs")
    data_dir = base / "data"
    data_dir.mkdir()
    port = free_port()
    server = Server(data_dir, port, server_env(data_dir, port, None)).start()
    arch = open_server_archive(server)
    for title in ("MOVESCU", "GETSCU", "STORESCU", "PYSCU", "PACSBOX"):
        arch.registry.add(AEEntry(title, "127.0.0.1", 104))
    server.archive = arch  # type: ignore[attr-defined]
    yield server
    server.stop()
    arch.engine.dispose()


@pytest.fixture
def pacs(shared_pacs: Server) -> Server:
    return shared_pacs


def _title(prefix: str) -> str:
    """A fresh AE title: tests share one server (and so its AE registry)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}".upper()


def _register(server, scp: StoreSCP, title: str | None = None, **kw: object) -> None:  # noqa: ANN001
    server.archive.registry.add(AEEntry(title or scp.aet, "127.0.0.1", scp.port, **kw))


def _store(server, files: list[Path]) -> None:  # noqa: ANN001
    """Store through the server's own ingest path (same index and blob store), in-process."""
    for f in files:
        server.archive.ingest.store_file(f)


def _study(folder: Path, n_series: int = 2, per_series: int = 3, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            ds = make_ct(study, series, instance_number=i + 1, rows=size, cols=size)
            ds.SeriesNumber = s + 1
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _fresh(name: str, study: str | None = None) -> Dataset:
    """A pydicom test file with new UIDs (tests share the server, and so the index)."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _fresh_ct_small() -> Dataset:
    return _fresh("CT_small.dcm")


def _by_uid(files: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


def _movescu(server, dest: str, *keys: str, extra: tuple[str, ...] = ()):  # noqa: ANN001, ANN202
    args = ["/usr/bin/movescu", "-v", "-aet", "MOVESCU", "-aec", "PACSBOX", "-aem", dest, "-S"]
    for k in keys:
        args += ["-k", k]
    return run_dcmtk([*args, *extra, "127.0.0.1", str(server.port)])


# -- C-MOVE with DCMTK ------------------------------------------------------------------
def test_movescu_study_arrives_byte_identical(pacs, storescp, tmp_path: Path) -> None:
    files = _study(tmp_path / "in")
    _store(pacs, files)
    dest = storescp()
    _register(pacs, dest)
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    out = _movescu(pacs, dest.aet, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert out.returncode == 0, out.stdout + out.stderr
    got = _by_uid(dest.files())
    sent = _by_uid(files)
    assert set(got) == set(sent)
    for uid, path in sent.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path), uid
    assert "Final Move Response (Success)" in out.stdout + out.stderr


def test_movescu_series_and_image_levels(pacs, storescp, tmp_path: Path) -> None:
    files = _study(tmp_path / "in")
    _store(pacs, files)
    dest = storescp()
    _register(pacs, dest)
    first = pydicom.dcmread(files[0])
    out = _movescu(
        pacs,
        dest.aet,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={first.StudyInstanceUID}",
        f"SeriesInstanceUID={first.SeriesInstanceUID}",
    )
    assert out.returncode == 0, out.stderr
    assert len(dest.files()) == 3
    two = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files[3:5]]
    uid_list = "\\".join(two)
    out = _movescu(pacs, dest.aet, "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={uid_list}")
    assert out.returncode == 0, out.stderr
    assert set(two) <= set(_by_uid(dest.files()))
    assert len(dest.files()) == 5


def test_movescu_unknown_destination_is_a801(pacs, tmp_path: Path) -> None:
    files = _study(tmp_path / "in", 1, 2)
    _store(pacs, files)
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    out = _movescu(pacs, "NOWHERE", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    text = out.stdout + out.stderr
    assert "a801" in text.lower() or "MoveDestinationUnknown" in text, text


def test_implicit_only_peer_gets_compressed_instances_decompressed(
    pacs, storescp, tmp_path: Path
) -> None:
    """J2K, JPEG-LS and RLE instances to a peer that accepts only Implicit VR LE."""
    names = ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"]
    study = generate_uid()
    files = []
    for i, name in enumerate(names):
        ds = _fresh(name, study)  # the pixel data stay as they are
        path = tmp_path / f"c{i}.dcm"
        ds.save_as(path)
        files.append(path)
    _store(pacs, files)
    dest = storescp("+xi")
    _register(pacs, dest)
    out = _movescu(pacs, dest.aet, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert out.returncode == 0, out.stdout + out.stderr
    got = _by_uid(dest.files())
    sent = _by_uid(files)
    assert len(sent) == 3 and set(got) == set(sent)
    for uid, path in sent.items():
        received = pydicom.dcmread(got[uid])
        assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert received.SOPInstanceUID == uid
        assert np.array_equal(received.pixel_array, pydicom.dcmread(path).pixel_array)


def test_compressed_peer_gets_compressed_as_stored(pacs, storescp, tmp_path: Path) -> None:
    files = []
    study = generate_uid()
    for i, name in enumerate(["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"]):
        ds = _fresh(name, study)
        path = tmp_path / f"c{i}.dcm"
        ds.save_as(path)
        files.append(path)
    _store(pacs, files)
    dest = storescp("+xa")
    _register(pacs, dest)
    out = _movescu(pacs, dest.aet, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert out.returncode == 0, out.stderr
    got = _by_uid(dest.files())
    assert len(got) == 2
    for uid, path in _by_uid(files).items():
        assert pydicom.dcmread(got[uid]).file_meta.TransferSyntaxUID != ImplicitVRLittleEndian
        assert dataset_bytes(got[uid]) == dataset_bytes(path)


# -- C-GET with DCMTK -------------------------------------------------------------------
@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_getscu_levels_byte_identical(pacs, tmp_path: Path, level: str) -> None:
    files = _study(tmp_path / "in")
    _store(pacs, files)
    first = pydicom.dcmread(files[0])
    keys = [f"QueryRetrieveLevel={level}", f"StudyInstanceUID={first.StudyInstanceUID}"]
    expected = _by_uid(files)
    if level in ("SERIES", "IMAGE"):
        keys.append(f"SeriesInstanceUID={first.SeriesInstanceUID}")
        expected = {u: p for u, p in expected.items() if p.name.startswith("s0_")}
    if level == "IMAGE":
        keys.append(f"SOPInstanceUID={first.SOPInstanceUID}")
        expected = {str(first.SOPInstanceUID): files[0]}
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    args = ["/usr/bin/getscu", "-aet", "GETSCU", "-aec", "PACSBOX", "-S", "-od", str(out_dir)]
    for k in keys:
        args += ["-k", k]
    out = run_dcmtk([*args, "127.0.0.1", str(pacs.port)])
    assert out.returncode == 0, out.stdout + out.stderr
    got = _by_uid(sorted(out_dir.iterdir()))
    assert set(got) == set(expected)
    for uid, path in expected.items():
        a, b = pydicom.dcmread(got[uid]), pydicom.dcmread(path)
        assert a == b  # every element equal (getscu re-encodes what it writes)


# -- pynetdicom SCU: cancel, partial failure, statuses ----------------------------------
def _py_move(  # noqa: ANN202
    server: Server,
    dest: str,
    identifier: Dataset,
    cancel_after: int | None = None,
    calling: str = "PYSCU",
):
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSBOX")
    assert assoc.is_established
    responses = []
    pending = 0
    try:
        for status, ident in assoc.send_c_move(
            identifier, dest, StudyRootQueryRetrieveInformationModelMove, msg_id=7
        ):
            if "Status" not in status:
                break
            responses.append((status, ident))
            if status.Status == 0xFF00:
                pending += 1
                if cancel_after is not None and pending == cancel_after:
                    assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
    finally:
        assoc.release()
    return responses


def _ident(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_cancel_stops_sending_and_answers_fe00(pacs, storescp, tmp_path: Path) -> None:
    files = _study(tmp_path / "in", 1, 300, size=128)
    _store(pacs, files)
    dest = storescp()
    _register(pacs, dest)
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    responses = _py_move(pacs, dest.aet, _ident("STUDY", StudyInstanceUID=study), cancel_after=2)
    final, ident = responses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    done = final.NumberOfCompletedSuboperations + final.NumberOfFailedSuboperations
    assert done + final.NumberOfRemainingSuboperations == 300
    time.sleep(0.3)
    arrived = len(dest.files())
    assert arrived == final.NumberOfCompletedSuboperations < 300


def test_missing_and_unreadable_files_give_b000_rest_arrives(
    pacs, storescp, tmp_path: Path
) -> None:
    files = _study(tmp_path / "in", 1, 6)
    _store(pacs, files)
    dest = storescp()
    _register(pacs, dest)
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    root = pacs.data_dir / "storage"
    stored = {p.stem: p for p in root.rglob("*.dcm")}
    stored[uids[1]].unlink()  # missing
    stored[uids[4]].unlink()
    stored[uids[4]].mkdir()  # unreadable: a directory where the file was
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    responses = _py_move(pacs, dest.aet, _ident("STUDY", StudyInstanceUID=study))
    final, ident = responses[-1]
    assert final.Status == 0xB000
    assert final.NumberOfCompletedSuboperations == 4
    assert final.NumberOfFailedSuboperations == 2
    failed = ident.FailedSOPInstanceUIDList
    assert sorted([failed] if isinstance(failed, str) else list(failed)) == sorted(
        [uids[1], uids[4]]
    )
    assert set(_by_uid(dest.files())) == set(uids) - {uids[1], uids[4]}


def test_statuses_identifier_destination_and_permission(pacs, storescp, tmp_path: Path) -> None:
    files = _study(tmp_path / "in", 1, 2)
    _store(pacs, files)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    dest = storescp()
    _register(pacs, dest)
    offline, notdest = _title("OFF"), _title("NOT")
    _register(pacs, dest, offline, enabled=False)
    _register(pacs, dest, notdest, is_destination=False)
    ok = _py_move(pacs, dest.aet, _ident("STUDY", StudyInstanceUID=study))
    assert ok[-1][0].Status == 0x0000 and ok[-1][0].NumberOfCompletedSuboperations == 2
    for title in (offline, notdest, _title("UNK")):
        assert _py_move(pacs, title, _ident("STUDY", StudyInstanceUID=study))[-1][0].Status == (
            0xA801
        )
    # PATIENT level is not part of Study Root; a STUDY identifier without its UID
    assert _py_move(pacs, dest.aet, _ident("PATIENT", PatientID="PAT001"))[-1][0].Status == 0xA900
    assert _py_move(pacs, dest.aet, _ident("STUDY"))[-1][0].Status == 0xA900
    # nothing matches: success with zero sub-operations
    none = _py_move(pacs, dest.aet, _ident("STUDY", StudyInstanceUID="1.2.3.4"))[-1][0]
    assert none.Status == 0x0000 and none.NumberOfCompletedSuboperations == 0
    # destination down: every sub-operation fails (A702)
    dest.stop()
    down = _py_move(pacs, dest.aet, _ident("STUDY", StudyInstanceUID=study))[-1][0]
    assert down.Status == 0xA702 and down.NumberOfFailedSuboperations == 2
    # a caller without allow_retrieve is refused
    caller = _title("NR")
    pacs.archive.registry.add(AEEntry(caller, "127.0.0.1", 104, allow_retrieve=False))
    refused = _py_move(pacs, dest.aet, _ident("STUDY", StudyInstanceUID=study), calling=caller)
    assert refused[-1][0].Status == 0x0124


def test_pynetdicom_cget_transcodes_to_what_requestor_accepts(pacs, tmp_path: Path) -> None:
    """C-GET where the requestor's CT context offers only Implicit VR LE: the JPEG-LS CT is
    decompressed on the way, the Explicit VR LE one re-encoded, UIDs unchanged."""
    from pynetdicom import build_role

    ds = _fresh_ct_small()
    study = str(ds.StudyInstanceUID)
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain)
    jls = copy.deepcopy(ds)
    jls.SOPInstanceUID = generate_uid()
    jls.compress(JPEGLSLossless, generate_instance_uid=False)
    packed = tmp_path / "jls.dcm"
    jls.save_as(packed)
    _store(pacs, [plain, packed])
    received: dict[str, Dataset] = {}

    def on_store(event) -> int:  # noqa: ANN001
        got = event.dataset
        got.file_meta = event.file_meta
        received[str(got.SOPInstanceUID)] = got
        return 0

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1",
        pacs.port,
        ae_title="PACSBOX",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    responses = list(
        assoc.send_c_get(
            _ident("STUDY", StudyInstanceUID=study), StudyRootQueryRetrieveInformationModelGet
        )
    )
    assoc.release()
    assert responses[-1][0].Status == 0x0000
    assert set(received) == {str(ds.SOPInstanceUID), str(jls.SOPInstanceUID)}
    for uid, got in received.items():
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert np.array_equal(got.pixel_array, ds.pixel_array), uid


@pytest.mark.parametrize("target", [JPEGLSLossless, RLELossless, JPEG2000Lossless])
def test_move_compresses_for_a_compressed_only_peer(pacs, tmp_path: Path, target: str) -> None:
    """A peer that accepts only a lossless compressed syntax gets it (rule 3), UID kept."""
    ds = _fresh_ct_small()
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    _store(pacs, [path])
    received: list[Dataset] = []

    def on_store(event) -> int:  # noqa: ANN001
        got = event.dataset
        got.file_meta = event.file_meta
        received.append(got)
        return 0

    packed = _title("P")
    scp_ae = AE(ae_title=packed)
    scp_ae.add_supported_context(CTImageStorage, [target])
    port = free_port()
    server = scp_ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        pacs.archive.registry.add(AEEntry(packed, "127.0.0.1", port))
        final = _py_move(pacs, packed, _ident("STUDY", StudyInstanceUID=ds.StudyInstanceUID))
    finally:
        server.shutdown()
    assert final[-1][0].Status == 0x0000
    assert len(received) == 1
    got = received[0]
    assert got.file_meta.TransferSyntaxUID == target
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(got.pixel_array, ds.pixel_array)


# -- pacsbox move / get CLI -------------------------------------------------------------
def test_cli_move_and_get_against_pacsbox(pacs, storescp, tmp_path: Path) -> None:
    files = _study(tmp_path / "in", 2, 2)
    _store(pacs, files)
    dest = storescp()
    _register(pacs, dest)
    first = pydicom.dcmread(files[0])
    target = f"PACSBOX@127.0.0.1:{pacs.port}"
    out = pacs.cli("move", target, "--to", dest.aet, "--study", first.StudyInstanceUID, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "0000" and report["completed"] == 4
    assert set(_by_uid(dest.files())) == set(_by_uid(files))

    folder = tmp_path / "got"
    out = pacs.cli("get", target, str(folder), "--series", first.SeriesInstanceUID, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "0000" and report["completed"] == 2 and report["saved"] == 2
    got = _by_uid(sorted(folder.glob("*.dcm")))
    expected = {u: p for u, p in _by_uid(files).items() if p.name.startswith("s0_")}
    assert set(got) == set(expected)
    for uid, path in expected.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path)
        assert pydicom.dcmread(got[uid]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    out = pacs.cli("move", target, "--to", "NOWHERE", "--study", first.StudyInstanceUID)
    assert out.returncode == 1
    assert "A801" in out.stdout
    # the registry flag decides whether an AE may be a destination
    assert pacs.cli("ae", "edit", dest.aet, "--no-destination").returncode == 0
    out = pacs.cli("move", target, "--to", dest.aet, "--study", first.StudyInstanceUID, "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "A801"


def test_cget_cancel_stops_and_answers_fe00(pacs, tmp_path: Path) -> None:
    from pynetdicom import build_role

    files = _study(tmp_path / "in", 1, 120, size=128)
    _store(pacs, files)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    received: list[str] = []

    def on_store(event) -> int:  # noqa: ANN001
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1",
        pacs.port,
        ae_title="PACSBOX",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    get_cx = next(
        cx.context_id
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet
    )
    responses = []
    pending = 0
    for status, ident in assoc.send_c_get(
        _ident("STUDY", StudyInstanceUID=study), StudyRootQueryRetrieveInformationModelGet, msg_id=9
    ):
        if "Status" not in status:
            break
        responses.append((status, ident))
        if status.Status == 0xFF00:
            pending += 1
            if pending == 2:
                assoc.send_c_cancel(9, get_cx)
    assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert len(received) == final.NumberOfCompletedSuboperations < 120
