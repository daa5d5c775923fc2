"""Shared test helpers: free ports, DCMTK invocation, data sets, a pacsbox server process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk_env() -> dict[str, str]:
    """DCMTK (and Orthanc) need TCP_NODELAY=1 or every message waits ~40 ms (notes)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run_dcmtk(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)


def make_ct(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT001",
    patient_name: str = "Doe^John",
    rows: int = 16,
    cols: int = 16,
    instance_number: int = 1,
    modality: str = "CT",
) -> Dataset:
    """A small but complete CT Image data set with file meta (Explicit VR LE)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ReferringPhysicianName = ""
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((i * 7) % 256 for i in range(rows * cols * 2))
    return ds


def write_study(folder: Path, n_series: int = 3, per_series: int = 4, **kw: str) -> list[Path]:
    """A generated multi-series study written as Part-10 files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            ds = make_ct(study, series, instance_number=i + 1, **kw)
            ds.SeriesNumber = s + 1
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The data set bytes of a Part-10 file (everything after the file meta)."""
    from pacsbox.archive.header import dataset_offset

    with open(path, "rb") as fh:
        offset = dataset_offset(fh)
        fh.seek(offset)
        return fh.read()


@dataclass
class Server:
    """A ``pacsbox serve`` process started by a test (stopped by PID)."""

    data_dir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    ae_title: str = "PACSBOX"
    tls_port: int = 0
    log: Path = field(default_factory=Path)

    def start(self, timeout: float = 30) -> Server:
        self.log = self.data_dir.parent / f"serve-{self.port}.out"
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "pacsbox"), "serve"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pacsbox serve exited: {self.log.read_text()[-3000:]}")
            if b"Ready." in self.log.read_bytes() and _port_open(self.port):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"pacsbox serve did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the parent (its workers die with it via PR_SET_PDEATHSIG)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        # wait until workers are gone and the port is free
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "pacsbox"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_env(data_dir: Path, port: int, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSBOX_")}
    config = data_dir.parent / "pacsbox-test.toml"
    if not config.exists():
        config.write_text("# settings come from PACSBOX_* variables in this test\n")
    env.update(
        PACSBOX_CONFIG=str(config),
        PACSBOX_DATA_DIR=str(data_dir),
        PACSBOX_BIND_ADDRESS="127.0.0.1",
        PACSBOX_DICOM_PORT=str(port),
        PACSBOX_DICOM_TLS_PORT="0",
        PACSBOX_HTTP_PORT="0",
        PACSBOX_HL7_PORT="0",
        PACSBOX_WORKERS="2",
    )
    if database_url:
        env["PACSBOX_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def open_server_archive(server: Server):  # noqa: ANN201 - returns pacsbox.app.Archive
    """The archive services (index + blob store) of a running test server, opened in this
    process on the same data folder and database (no migrations: the server ran them).
    Call ``.engine.dispose()`` when done."""
    from pacsbox.app import build_archive
    from pacsbox.settings import Settings

    settings = Settings(
        data_dir=server.data_dir,
        database_url=server.env.get("PACSBOX_DATABASE_URL") or None,
        dicom_port=0,
        dicom_tls_port=0,
        http_port=0,
        hl7_port=0,
    )
    return build_archive(settings, migrate=False)


def wait_for_log(server: Server, needle: str, timeout: float = 5.0) -> str:
    """Wait until ``<data_dir>/log/pacsbox.log`` contains ``needle``; return the log text."""
    path = server.data_dir / "log" / "pacsbox.log"
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {path} after {timeout}s; log ends:\n{text[-2000:]}")
