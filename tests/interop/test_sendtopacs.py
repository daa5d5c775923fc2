"""sendtopacs sending to real peers (SPEC S5): DCMTK storescp, Orthanc and pacsbox.

Converted objects and DICOM files go through the ``sendtopacs`` command (a subprocess, as a
user runs it) with devices from a settings file written by ``sendtopacs devices add``. Checked:
what arrived (and in which transfer syntax), that a "decompress" device receives Explicit VR
Little Endian, that files-per-association holds (associations counted in storescp's verbose
log), and that failures — nothing listening, association rejected, no presentation context
accepted — give a per-file reason and exit code 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from tests.helpers import VENV_BIN, dcmtk_env, free_port, open_server_archive

pytestmark = pytest.mark.interop

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

STORESCP = Path("/usr/bin/storescp")
IN_CI = os.environ.get("CI", "").lower() == "true"
PATIENT = ["--patient-id", "SP1", "--patient-name", "Send^Test", "--birth-date", "19800101"]


def _require(path: Path) -> None:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is required in CI")
        pytest.skip(f"{path} not installed")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A photo (JPEG), a scan (PNG), a 3-page TIFF, a PDF and an H.264 MP4."""
    d = tmp_path_factory.mktemp("sendinputs")
    yy, xx = np.indices((120, 160))
    rgb = np.stack([(xx + yy) % 256, xx % 256, yy % 256], -1).astype(np.uint8)
    Image.fromarray(rgb).save(d / "a_photo.jpg", quality=90)
    Image.fromarray(rgb).save(d / "b_scan.png")
    pages = [Image.fromarray(np.roll(rgb, i * 10, 0)) for i in range(3)]
    pages[0].save(d / "c_pages.tif", save_all=True, append_images=pages[1:])
    (d / "d_report.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    out = av.open(str(d / "e_clip.mp4"), "w")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    stream.options = {"profile": "high", "level": "4.1"}
    for i in range(10):
        frame = av.VideoFrame.from_ndarray(np.roll(rgb, i, 1).copy(), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return d


def stp(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "sendtopacs"), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class StoreSCP:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path
    log: Path

    def associations(self) -> int:
        return self.log.read_text(errors="replace").count("Association Received")

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _listening(port: int) -> bool:
    """A socket in LISTEN state on ``port`` (/proc/net/tcp{,6}, state 0A)."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                return True
    return False


@pytest.fixture
def start_storescp(tmp_path: Path) -> Iterator:
    _require(STORESCP)
    started: list[StoreSCP] = []

    def factory(*options: str, name: str = "scp") -> StoreSCP:
        port = free_port()
        folder = tmp_path / name
        folder.mkdir()
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(STORESCP), "-v", "-aet", "STORESCP", "-od", str(folder), *options, str(port)],
                env=dcmtk_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        scp = StoreSCP(proc, port, folder, log)
        started.append(scp)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # not by connecting: that would count as one
            if _listening(port):
                return scp
            time.sleep(0.05)
        raise RuntimeError(f"storescp did not listen: {log.read_text()}")

    yield factory
    for scp in started:
        scp.stop()


def add_device(config: Path, name: str, port: int, *extra: str, aec: str = "STORESCP") -> None:
    res = stp(
        config,
        "devices",
        "add",
        name,
        "--aec",
        aec,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_send_converted_files_to_storescp_n_per_association(
    inputs: Path, tmp_path: Path, start_storescp
) -> None:
    scp = start_storescp("+xa")
    config = tmp_path / "stp.json"
    add_device(config, "dcmtk", scp.port, "--files-per-association", "2")
    echo = stp(config, "echo", "dcmtk")
    assert echo.returncode == 0 and "success" in echo.stdout, echo.stdout + echo.stderr
    assert scp.associations() == 1
    res = stp(config, "send", str(inputs), "--to", "dcmtk", *PATIENT, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["sent"] == 5 and report["failed"] == 0 and report["associations"] == 3
    assert [f["association"] for f in report["files"]] == [1, 1, 2, 2, 3]
    assert scp.associations() == 1 + 3  # the echo + ceil(5 / 2)
    got = {}
    for path in scp.received():
        ds = dcmread(path)
        got[str(ds.SOPClassUID)] = str(ds.file_meta.TransferSyntaxUID)
        assert ds.PatientID == "SP1" and str(ds.PatientName) == "Send^Test"
    assert got == {
        "1.2.840.10008.5.1.4.1.1.7": "1.2.840.10008.1.2.1",  # PNG native
        "1.2.840.10008.5.1.4.1.1.7.4": "1.2.840.10008.1.2.1",  # TIFF multi-frame
        "1.2.840.10008.5.1.4.1.1.104.1": "1.2.840.10008.1.2.1",  # PDF
        "1.2.840.10008.5.1.4.1.1.77.1.4.1": "1.2.840.10008.1.2.4.102",  # H.264 as is
    } | {"1.2.840.10008.5.1.4.1.1.7": got["1.2.840.10008.5.1.4.1.1.7"]}
    jpeg = [p for p in scp.received() if dcmread(p).file_meta.TransferSyntaxUID.endswith(".4.50")]
    assert len(jpeg) == 1  # the photo went as JPEG Baseline, unchanged


def test_decompress_device_receives_explicit_vr_le(
    inputs: Path, tmp_path: Path, start_storescp
) -> None:
    scp = start_storescp("+xa")
    config = tmp_path / "stp.json"
    add_device(config, "old", scp.port, "--decompress")
    # a converted DICOM file (JPEG Baseline) is sent "as is" except for the decompression
    out = tmp_path / "dcm"
    res = stp(config, "convert", str(inputs / "a_photo.jpg"), "-o", str(out), *PATIENT)
    assert res.returncode == 0, res.stdout + res.stderr
    files = list(out.iterdir())
    res = stp(config, "send", *map(str, files), str(inputs / "b_scan.png"), "--to", "old", *PATIENT)
    assert res.returncode == 0, res.stdout + res.stderr
    received = [dcmread(p) for p in scp.received()]
    assert len(received) == 2
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in received} == {"1.2.840.10008.1.2.1"}
    photo = next(ds for ds in received if ds.SOPInstanceUID == dcmread(files[0]).SOPInstanceUID)
    assert photo.PhotometricInterpretation == "RGB" and photo.pixel_array.shape == (120, 160, 3)


def test_peer_without_compressed_contexts(inputs: Path, tmp_path: Path, start_storescp) -> None:
    """storescp without +xa accepts only uncompressed syntaxes: the JPEG is decompressed on
    the fly (no context for JPEG Baseline), the video fails with a clear reason."""
    scp = start_storescp()
    config = tmp_path / "stp.json"
    add_device(config, "plain", scp.port)
    res = stp(
        config,
        "send",
        str(inputs / "a_photo.jpg"),
        str(inputs / "e_clip.mp4"),
        "--to",
        "plain",
        *PATIENT,
        "--json",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    files = {Path(f["file"]).name: f for f in json.loads(res.stdout)["files"]}
    assert files["a_photo.jpg"]["ok"] and files["a_photo.jpg"]["transfer_syntax"].endswith("2.1")
    assert not files["e_clip.mp4"]["ok"]
    assert (
        "accepted no presentation context for Video Photographic"
        in (files["e_clip.mp4"]["message"])
    )


def test_failures_have_reasons_and_exit_code(inputs: Path, tmp_path: Path, start_storescp) -> None:
    config = tmp_path / "stp.json"
    add_device(config, "down", free_port())
    res = stp(
        config,
        "send",
        str(inputs / "b_scan.png"),
        str(inputs / "d_report.pdf"),
        "--to",
        "down",
        *PATIENT,
    )
    assert res.returncode == 1
    assert res.stdout.count("connection refused") == 2, res.stdout
    assert stp(config, "echo", "down").returncode == 1
    refusing = start_storescp("--refuse", name="refusing")
    add_device(config, "refusing", refusing.port)
    # storescp --refuse closes right after its A-ASSOCIATE-RJ; now and then pynetdicom sees
    # the close first and reports an abort. The rejection must be reported when it is read.
    for _attempt in range(3):
        res = stp(config, "send", str(inputs / "b_scan.png"), "--to", "refusing", *PATIENT)
        assert res.returncode == 1
        if "association aborted by STORESCP@127.0.0.1" not in res.stdout:
            break
    assert "association rejected by STORESCP@127.0.0.1" in res.stdout, res.stdout
    # not a DICOM file and not convertible: a reason for that file, the rest still goes
    scp = start_storescp(name="ok")
    add_device(config, "ok", scp.port)
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    res = stp(config, "send", str(junk), str(inputs / "b_scan.png"), "--to", "ok", *PATIENT)
    assert res.returncode == 1 and "notes.txt: not sent: " in res.stdout, res.stdout
    assert len(scp.received()) == 1
    # invalid patient data: exit code 2, nothing sent
    res = stp(config, "send", str(inputs / "b_scan.png"), "--to", "ok", "--patient-id", "X")
    assert res.returncode == 2 and "last name: required" in res.stderr
    res = stp(config, "send", str(inputs / "b_scan.png"), "--to", "nope", *PATIENT)
    assert res.returncode == 2 and "unknown device" in res.stderr


def test_send_to_orthanc(inputs: Path, tmp_path: Path) -> None:
    from tests.interop.test_orthanc_qr import ORTHANC_BIN, start_orthanc, stop_orthanc

    _require(ORTHANC_BIN)

    @dataclass
    class _Peer:  # start_orthanc registers a peer modality; none is needed here
        ae_title: str = "NOBODY"
        port: int = 1

    orthanc = start_orthanc(tmp_path / "orthanc", _Peer())  # type: ignore[arg-type]
    try:
        config = tmp_path / "stp.json"
        add_device(
            config, "orthanc", orthanc.dicom_port, "--files-per-association", "3", aec="ORTHANC"
        )
        assert stp(config, "echo").returncode == 0  # the only device is the default
        res = stp(config, "send", str(inputs), *PATIENT, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        report = json.loads(res.stdout)
        assert report["sent"] == 5 and report["associations"] == 2
        uids = {f["sop_instance_uid"] for f in report["files"]}
        instances = orthanc.rest("GET", "/instances?expand")
        assert {i["MainDicomTags"]["SOPInstanceUID"] for i in instances} == uids
        for inst in instances:
            meta = orthanc.rest("GET", f"/instances/{inst['ID']}/metadata?expand")
            assert meta["TransferSyntax"] in (
                "1.2.840.10008.1.2.1",
                "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.102",
            )
    finally:
        stop_orthanc(orthanc)


def test_send_to_pacsbox(inputs: Path, tmp_path: Path, make_server) -> None:
    from pacsbox.archive.index.models import Instance

    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    config = tmp_path / "stp.json"
    add_device(config, "pacsbox", server.port, aec=server.ae_title)
    res = stp(config, "send", str(inputs), "--to", "pacsbox", *PATIENT, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    want = {f["sop_instance_uid"]: f["transfer_syntax"] for f in report["files"]}
    archive = open_server_archive(server)
    try:
        table = Instance.__table__
        with archive.engine.connect() as conn:
            rows = conn.execute(
                select(table.c.sop_instance_uid, table.c.transfer_syntax_uid).where(
                    table.c.sop_instance_uid.in_(list(want))
                )
            ).all()
    finally:
        archive.engine.dispose()
    assert {r[0]: r[1] for r in rows} == want
    assert "1.2.840.10008.1.2.4.102" in want.values() and "1.2.840.10008.1.2.4.50" in (
        want.values()
    )
