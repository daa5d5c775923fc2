#!/usr/bin/env python3
"""Ingest benchmark: C-STORE a CT corpus into DCMTK storescp, Orthanc and pacsbox.

The script

1. generates (once, cached in ``--corpus``) ``--count`` CT Image Storage
   instances, 512x512, 16 bit allocated / 12 bit stored noise, Explicit VR
   Little Endian, grouped into series of ``--series-size`` instances;
2. for every receiver in ``--receivers`` and every association count in
   ``--associations`` starts a fresh receiver on a free 127.0.0.1 port with an
   empty temporary storage directory, sends the whole corpus with DCMTK
   ``storescu`` (the file list split into that many contiguous parts, one
   ``storescu`` process per part, all in parallel), checks that the receiver
   holds every instance, and stops the receiver by PID;
3. records wall time, instances/s, MB/s (10^6 bytes of the sent files per
   second of wall time), the receiver process tree's peak RSS and PSS (sampled every
   100 ms) and its CPU time, prints a table plus pacsbox ratios, and writes
   ``--json FILE`` when asked.

DCMTK 3.6.7 (Debian) leaves Nagle's algorithm on unless the environment holds
``TCP_NODELAY=1``, so every DCMTK process and Orthanc get that variable.

Example::

    .venv/bin/python bench/ingest.py --receivers storescp,orthanc --json /tmp/ingest.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_CORPUS = BENCH_DIR / ".corpus" / "ct"
DEFAULT_PACSBOX = REPO_DIR / ".venv" / "bin" / "pacsbox"
ALL_RECEIVERS = ("storescp", "orthanc", "pacsbox")
CALLING_AET = "BENCH"
HOST = "127.0.0.1"
ROWS = COLUMNS = 512
SERIES_PER_STUDY = 5
CORPUS_VERSION = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Maps each high byte of a little-endian 16-bit sample to its low 4 bits: values stay in 12 bits.
HIGH_BYTE_MASK = bytes(b & 0x0F for b in range(256))


# --------------------------------------------------------------------------- corpus


def _series_dataset(
    patient: tuple[str, str, str, str],
    study: dict[str, str],
    series_number: int,
    series_uid: str,
    frame_uid: str,
) -> Dataset:
    """Return the attributes shared by every instance of one CT series."""
    name, pid, birth, sex = patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = study["date"]
    ds.SeriesDate = study["date"]
    ds.AcquisitionDate = study["date"]
    ds.ContentDate = study["date"]
    ds.StudyTime = study["time"]
    ds.SeriesTime = f"{int(study['time'][:2]):02d}{series_number:02d}00"
    ds.AcquisitionTime = ds.SeriesTime
    ds.ContentTime = ds.SeriesTime
    ds.AccessionNumber = study["accession"]
    ds.Modality = "CT"
    ds.Manufacturer = "PACSBOX BENCH"
    ds.InstitutionName = "Bench Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN"
    ds.SeriesDescription = f"AXIAL {series_number}"
    ds.ManufacturerModelName = "Synthetic"
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study["uid"]
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study["id"]
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _pixel_data(rng: random.Random) -> bytes:
    """Return 512x512 little-endian 16-bit samples of uniform 12-bit noise."""
    data = bytearray(rng.randbytes(ROWS * COLUMNS * 2))
    data[1::2] = data[1::2].translate(HIGH_BYTE_MASK)
    return bytes(data)


def generate_corpus(directory: Path, count: int, series_size: int) -> list[Path]:
    """Create (or reuse) ``count`` CT instances in ``directory`` and return their paths.

    A ``manifest.json`` records what was generated; the corpus is reused when it
    matches the request and every listed file exists.
    """
    manifest_path = directory / "manifest.json"
    wanted = {"version": CORPUS_VERSION, "count": count, "series_size": series_size}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = [directory / name for name in manifest.get("files", [])]
        if {k: manifest.get(k) for k in wanted} == wanted and all(f.is_file() for f in files):
            return files
        for old in files:  # only remove what an earlier run of this script generated
            old.unlink(missing_ok=True)
        manifest_path.unlink()

    directory.mkdir(parents=True, exist_ok=True)
    print(f"generating {count} CT instances in {directory} ...", flush=True)
    started = time.monotonic()
    rng = random.Random(20261122)
    today = dt.date.today().strftime("%Y%m%d")
    files: list[Path] = []
    series_ds: Dataset | None = None
    study: dict[str, str] = {}
    patient = ("", "", "", "")
    series_index = -1
    for i in range(count):
        if i % series_size == 0:
            series_index += 1
            if series_index % SERIES_PER_STUDY == 0:
                study_no = series_index // SERIES_PER_STUDY + 1
                patient = (
                    f"Bench^Patient{study_no:03d}",
                    f"BENCH{study_no:05d}",
                    f"19{50 + study_no % 50:02d}0{1 + study_no % 9}15",
                    "FM"[study_no % 2],
                )
                study = {
                    "uid": generate_uid(),
                    "date": today,
                    "time": f"{8 + study_no % 10:02d}3000",
                    "accession": f"ACC{study_no:07d}",
                    "id": f"{study_no}",
                }
            series_ds = _series_dataset(
                patient,
                study,
                series_index % SERIES_PER_STUDY + 1,
                generate_uid(),
                generate_uid(),
            )
        assert series_ds is not None
        instance_number = i % series_size + 1
        ds = Dataset()
        ds.update(series_ds)
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = today
        ds.InstanceNumber = instance_number
        z = -1.25 * instance_number
        ds.ImagePositionPatient = ["-180.0", "-180.0", f"{z:.2f}"]
        ds.SliceLocation = f"{z:.2f}"
        ds.PixelData = _pixel_data(rng)
        ds["PixelData"].VR = "OW"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = directory / f"ct_{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)

    manifest = {**wanted, "files": [f.name for f in files]}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
    return files


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    """Return the environment for DCMTK tools and Orthanc (Nagle off)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """Return (ppid, start time, "utime stime cutime cstime") of ``pid``, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); ppid is field 4; utime..cstime 14..17; starttime 22.
    return int(fields[1]), int(fields[19]), " ".join(fields[11:15])


def process_tree(root: int) -> list[int]:
    """Return ``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: pages shared by n processes count 1/n in each."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_seconds(root: int) -> float:
    """Return user+system CPU of the tree, including children it has reaped."""
    total = 0
    for pid in process_tree(root):
        stat = _proc_stat(pid)
        if stat is not None:
            total += sum(int(x) for x in stat[2].split())
    return total / CLK_TCK


class RssSampler:
    """Sample the summed VmRSS and PSS of a process tree every ``interval`` seconds.

    Summed RSS counts the pages forked processes share (copy-on-write) once per process;
    summed PSS splits them among their sharers and is the tree's real footprint.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """Take one sample now."""
        pids = process_tree(self.root)
        self.peak_kib = max(self.peak_kib, sum(_rss_kib(pid) for pid in pids))
        self.peak_pss_kib = max(self.peak_pss_kib, sum(_pss_kib(pid) for pid in pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop ``proc`` (SIGTERM, then SIGKILL) and any descendants it leaves behind, by PID."""
    descendants: list[tuple[int, int]] = []
    for pid in process_tree(proc.pid)[1:]:
        stat = _proc_stat(pid)
        if stat is not None:
            descendants.append((pid, stat[1]))
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    for pid, start in descendants:
        while time.monotonic() < deadline:
            stat = _proc_stat(pid)
            if stat is None or stat[1] != start:  # gone (or the PID was reused)
                break
            time.sleep(0.05)
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- receivers


@dataclass
class Receiver:
    """A running receiver: its process, address and how to count what it stored."""

    name: str
    aet: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    http_port: int = 0

    def count(self) -> int:
        """Return how many instances the receiver holds."""
        if self.name == "orthanc":
            url = f"http://{HOST}:{self.http_port}/statistics"
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
                return int(json.load(resp)["CountInstances"])
        if self.name == "storescp":
            return sum(1 for p in (self.workdir / "store").iterdir() if p.is_file())
        return count_pacsbox_files(self.workdir / "data")


def count_pacsbox_files(data_dir: Path) -> int:
    """Count ``*.dcm`` files under ``data_dir``, skipping hidden and temporary ones."""
    temp_parts = {"tmp", "temp", "incoming", "staging", "spool"}
    total = 0
    for path in data_dir.rglob("*.dcm"):
        parts = path.relative_to(data_dir).parts
        if any(p.startswith(".") or p.lower() in temp_parts for p in parts):
            continue
        if path.is_file():
            total += 1
    return total


def echo_ok(bin_dir: Path, aet: str, port: int) -> bool:
    """Return True when a C-ECHO from ``BENCH`` to ``aet`` at 127.0.0.1:``port`` succeeds."""
    cmd = [str(bin_dir / "echoscu"), "-aet", CALLING_AET, "-aec", aet, "-to", "2", HOST, str(port)]
    try:
        res = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


def wait_ready(receiver: Receiver, bin_dir: Path, timeout: float) -> None:
    """Wait until the receiver answers C-ECHO, or raise RuntimeError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.proc.poll() is not None:
            tail = receiver.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{receiver.name} exited with {receiver.proc.returncode} during start:\n{tail}"
            )
        if echo_ok(bin_dir, receiver.aet, receiver.port):
            try:
                receiver.count()  # Orthanc's REST API must answer too
            except OSError:
                pass
            else:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{receiver.name} did not answer C-ECHO within {timeout:.0f} s")


def wait_idle(receiver: Receiver, timeout: float, quiet_s: float = 0.5) -> None:
    """Wait (bounded) until the receiver's process tree stops using CPU.

    An answered C-ECHO proves one listener is up; other worker processes (pacsbox) or
    background start-up work may still be running, and their CPU time would otherwise be
    counted as ingest work. Idle means at most 20 ms of CPU over ``quiet_s`` seconds (CPU
    times have a 10 ms granularity); the wait ends after ``timeout`` s (at most 15) anyway.
    """
    deadline = time.monotonic() + min(timeout, 15.0)
    before = tree_cpu_seconds(receiver.proc.pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = tree_cpu_seconds(receiver.proc.pid)
        if now - before <= 0.02:
            return
        before = now


def wait_for_orthanc_binary(path: Path, timeout: float) -> None:
    """Wait for the Orthanc binary (apt may still be installing it); install it if absent."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        print(f"waiting for {path} ...", flush=True)
        time.sleep(10)
    if not path.exists():
        subprocess.run(["apt-get", "install", "-y", "orthanc"], check=True, timeout=900)


def _popen(
    cmd: Sequence[str], env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def start_storescp(args: argparse.Namespace, workdir: Path) -> Receiver:
    """Start DCMTK storescp: one forked child per association, bit-preserving."""
    store = workdir / "store"
    store.mkdir()
    port = free_port()
    cmd = [
        str(args.dcmtk_bin / "storescp"),
        "--fork",
        "+B",
        "-od",
        str(store),
        "-aet",
        "STORESCP",
        "-dhl",
    ]
    if args.max_pdu:
        cmd += ["-pdu", str(args.max_pdu)]
    cmd.append(str(port))
    log = workdir / "storescp.log"
    return Receiver(
        "storescp", "STORESCP", port, _popen(cmd, dcmtk_env(), workdir, log), workdir, log
    )


def start_orthanc(args: argparse.Namespace, workdir: Path) -> Receiver:
    """Start Orthanc with its own configuration in ``workdir``."""
    port, http_port = free_port(), free_port()
    config = {
        "Name": "pacsbox-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomThreadsCount": 4,
        "SaveJobs": False,
    }
    if args.max_pdu:
        config["MaximumPduLength"] = args.max_pdu
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    cmd = [str(args.orthanc_bin), str(config_path)]
    proc = _popen(cmd, dcmtk_env(), workdir, log)
    return Receiver("orthanc", "ORTHANC", port, proc, workdir, log, http_port=http_port)


def pacsbox_command(args: argparse.Namespace) -> list[str]:
    """Return the argv that starts pacsbox."""
    if args.pacsbox_cmd:
        return shlex.split(args.pacsbox_cmd)
    return [str(DEFAULT_PACSBOX), "serve"]


def start_pacsbox(args: argparse.Namespace, workdir: Path) -> Receiver:
    """Start ``pacsbox serve`` configured through PACSBOX_* environment variables."""
    port = free_port()
    data = workdir / "data"
    data.mkdir()
    env = {
        **os.environ,
        "PACSBOX_DATA_DIR": str(data),
        "PACSBOX_BIND_ADDRESS": HOST,
        "PACSBOX_DICOM_PORT": str(port),
        "PACSBOX_HTTP_PORT": "0",
        "PACSBOX_HL7_PORT": "0",
        "PACSBOX_DICOM_TLS_PORT": "0",
        "PACSBOX_PERMISSIVE_AES": "true",
        "PACSBOX_PERMISSIVE_AES_ENABLED": "true",
    }
    if args.workers:
        env["PACSBOX_WORKERS"] = str(args.workers)
    if args.database_url:
        env["PACSBOX_DATABASE_URL"] = args.database_url
    log = workdir / "pacsbox.log"
    return Receiver(
        "pacsbox",
        args.pacsbox_aet,
        port,
        _popen(pacsbox_command(args), env, workdir, log),
        workdir,
        log,
    )


STARTERS = {"storescp": start_storescp, "orthanc": start_orthanc, "pacsbox": start_pacsbox}


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """Figures for one receiver and one association count."""

    receiver: str
    associations: int
    repetition: int
    instances: int
    payload_bytes: int
    wall_s: float = 0.0
    settle_s: float = 0.0
    inst_per_s: float = 0.0
    mb_per_s: float = 0.0
    stored: int = 0
    verified: bool = False
    storescu_rc: list[int] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    cpu_s: float = 0.0
    cpu_ms_per_inst: float = 0.0
    error: str = ""


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split ``files`` into ``parts`` contiguous, nearly equal chunks."""
    size, extra = divmod(len(files), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(files[start:end]))
        start = end
    return [c for c in chunks if c]


def send(
    args: argparse.Namespace, receiver: Receiver, chunks: list[list[Path]], logdir: Path
) -> list[int]:
    """Run one storescu per chunk in parallel and return their exit codes."""
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + args.timeout
    try:
        for i, chunk in enumerate(chunks):
            cmd = [
                str(args.dcmtk_bin / "storescu"),
                "-aet",
                CALLING_AET,
                "-aec",
                receiver.aet,
                HOST,
                str(receiver.port),
                *map(str, chunk),
            ]
            procs.append(_popen(cmd, dcmtk_env(), logdir, logdir / f"storescu-{i}.log"))
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(-999)
        return codes
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def run_once(
    args: argparse.Namespace,
    name: str,
    associations: int,
    repetition: int,
    files: list[Path],
    payload: int,
) -> RunResult:
    """Start ``name`` fresh, send the corpus over ``associations`` associations, stop it."""
    result = RunResult(name, associations, repetition, len(files), payload)
    workdir = Path(tempfile.mkdtemp(prefix=f"ingest-{name}-{associations}-", dir=args.tmp_dir))
    receiver: Receiver | None = None
    try:
        receiver = STARTERS[name](args, workdir)
        wait_ready(receiver, args.dcmtk_bin, args.start_timeout)
        wait_idle(receiver, args.start_timeout)
        chunks = split(files, associations)
        cpu_before = tree_cpu_seconds(receiver.proc.pid)
        with RssSampler(receiver.proc.pid) as sampler:
            started = time.perf_counter()
            result.storescu_rc = send(args, receiver, chunks, workdir)
            result.wall_s = time.perf_counter() - started
            # Wait (bounded) until the receiver shows every instance, e.g. asynchronous indexing.
            deadline = time.monotonic() + args.settle_timeout
            while True:
                result.stored = receiver.count()
                if result.stored >= len(files) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            result.settle_s = time.perf_counter() - started - result.wall_s
            result.cpu_s = tree_cpu_seconds(receiver.proc.pid) - cpu_before
        result.peak_rss_mib = sampler.peak_kib / 1024
        result.peak_pss_mib = sampler.peak_pss_kib / 1024
        result.inst_per_s = len(files) / result.wall_s
        result.mb_per_s = payload / result.wall_s / 1e6
        result.cpu_ms_per_inst = result.cpu_s * 1000 / len(files)
        result.verified = result.stored == len(files) and all(rc == 0 for rc in result.storescu_rc)
        if not result.verified:
            logs = sorted(workdir.glob("storescu-*.log"))
            tail = "".join(p.read_text(errors="replace")[-400:] for p in logs)
            result.error = (
                f"stored {result.stored}/{len(files)}, storescu rc {result.storescu_rc}\n{tail}"
            )
    except Exception as exc:  # noqa: BLE001 (reported in the table, the other runs continue)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if receiver is not None:
            stop_process(receiver.proc)
        if args.keep:
            print(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report


def summarise(results: list[RunResult]) -> dict[tuple[str, int], RunResult]:
    """Return, per (receiver, associations), the repetition with the median wall time."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.receiver, r.associations), []).append(r)
    summary = {}
    for key, runs in groups.items():
        ok = [r for r in runs if not r.error] or runs
        median = statistics.median_low([r.wall_s for r in ok])
        summary[key] = next(r for r in ok if r.wall_s == median)
    return summary


def print_report(results: list[RunResult], repeat: int) -> None:
    """Print the results table and the pacsbox ratios."""
    summary = summarise(results)
    print()
    label = f" (median of {repeat})" if repeat > 1 else ""
    print(f"Ingest results{label}")
    header = (
        f"{'receiver':<9} {'assoc':>5} {'wall s':>7} {'inst/s':>7} {'MB/s':>6} "
        f"{'stored':>7} {'peak RSS MiB':>12} {'PSS MiB':>7} {'CPU ms/inst':>11}  ok"
    )
    print(header)
    print("-" * len(header))
    for (name, assoc), r in summary.items():
        print(
            f"{name:<9} {assoc:>5} {r.wall_s:>7.2f} {r.inst_per_s:>7.1f} {r.mb_per_s:>6.1f} "
            f"{r.stored:>7} {r.peak_rss_mib:>12.1f} {r.peak_pss_mib:>7.1f} "
            f"{r.cpu_ms_per_inst:>11.2f}  "
            f"{'yes' if r.verified else 'NO'}"
        )
    for r in results:
        if r.error:
            print(f"\n{r.receiver} x{r.associations} #{r.repetition}: {r.error.strip()}")
    assoc_counts = sorted({a for _, a in summary})
    lines = []
    for assoc in assoc_counts:
        mine = summary.get(("pacsbox", assoc))
        if mine is None or not mine.verified:
            continue
        for other in ("orthanc", "storescp"):
            theirs = summary.get((other, assoc))
            if theirs is not None and theirs.verified:
                speed = mine.inst_per_s / theirs.inst_per_s
                rss = mine.peak_rss_mib / max(theirs.peak_rss_mib, 0.1)
                lines.append(
                    f"  {assoc} assoc: pacsbox/{other} = {speed:.2f} (throughput), "
                    f"{rss:.2f} (peak RSS)"
                )
    print("\nRatios")
    print("\n".join(lines) if lines else "  (no verified pacsbox run to compare)")


def machine_info() -> dict[str, object]:
    """Describe the machine the benchmark ran on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def tool_versions(args: argparse.Namespace, receivers: Sequence[str]) -> dict[str, str]:
    """Return the first version line of each tool used."""
    cmds = {"storescu": [str(args.dcmtk_bin / "storescu"), "--version"]}
    if "orthanc" in receivers:
        cmds["orthanc"] = [str(args.orthanc_bin), "--version"]
    out = {}
    for name, cmd in cmds.items():
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            out[name] = (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError) as exc:
            out[name] = f"unknown ({exc})"
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus cache directory")
    p.add_argument("--count", type=int, default=500, help="number of CT instances (default 500)")
    p.add_argument(
        "--series-size", type=int, default=100, help="instances per series (default 100)"
    )
    p.add_argument(
        "--receivers",
        default=",".join(ALL_RECEIVERS),
        help="comma list of storescp,orthanc,pacsbox",
    )
    p.add_argument(
        "--associations", default="1,4", help="comma list of association counts (default 1,4)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="repetitions per case; the median is shown"
    )
    p.add_argument("--workers", type=int, default=0, help="PACSBOX_WORKERS for pacsbox")
    p.add_argument("--database-url", default="", help="PACSBOX_DATABASE_URL for pacsbox")
    p.add_argument(
        "--pacsbox-cmd",
        default="",
        help="command that starts pacsbox (default: <venv>/bin/pacsbox serve)",
    )
    p.add_argument("--pacsbox-aet", default="PACSBOX", help="called AE title for pacsbox")
    p.add_argument(
        "--max-pdu",
        type=int,
        default=0,
        help="max receive PDU for storescp/Orthanc (default: their 16 KiB)",
    )
    p.add_argument(
        "--dcmtk-bin", type=Path, default=Path("/usr/bin"), help="directory of DCMTK tools"
    )
    p.add_argument("--orthanc-bin", type=Path, default=Path("/usr/sbin/Orthanc"))
    p.add_argument("--timeout", type=float, default=600, help="limit for one send phase, s")
    p.add_argument(
        "--start-timeout", type=float, default=60, help="limit for a receiver to start, s"
    )
    p.add_argument(
        "--settle-timeout", type=float, default=60, help="limit for the stored count to reach N, s"
    )
    p.add_argument("--tmp-dir", default=None, help="parent of the temporary receiver directories")
    p.add_argument("--keep", action="store_true", help="keep receiver directories and logs")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 when every run stored every instance."""
    args = parse_args(argv)
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    unknown = set(receivers) - set(ALL_RECEIVERS)
    if unknown:
        sys.exit(f"unknown receivers: {', '.join(sorted(unknown))}")
    assoc_counts = [int(a) for a in args.associations.split(",") if a.strip()]
    for tool in ("storescu", "storescp", "echoscu"):
        if not (args.dcmtk_bin / tool).exists():
            sys.exit(f"{args.dcmtk_bin / tool} not found (apt-get install -y dcmtk)")
    if "orthanc" in receivers:
        wait_for_orthanc_binary(args.orthanc_bin, timeout=300)
    if "pacsbox" in receivers and not args.pacsbox_cmd and not DEFAULT_PACSBOX.exists():
        print(f"{DEFAULT_PACSBOX} not found: skipping pacsbox", flush=True)
        receivers.remove("pacsbox")

    files = generate_corpus(args.corpus, args.count, args.series_size)
    payload = 0
    for path in files:  # read once: page cache warm for every receiver
        payload += len(path.read_bytes())
    print(f"corpus: {len(files)} files, {payload / 1e6:.1f} MB", flush=True)

    results: list[RunResult] = []
    for repetition in range(1, args.repeat + 1):
        for name in receivers:
            for assoc in assoc_counts:
                print(f"{name}: {assoc} association(s), run {repetition} ...", flush=True)
                r = run_once(args, name, assoc, repetition, files, payload)
                status = (
                    "ok" if r.verified else f"FAILED: {r.error.splitlines()[0] if r.error else ''}"
                )
                print(f"  {r.wall_s:.2f} s, {r.inst_per_s:.1f} inst/s, {status}", flush=True)
                results.append(r)

    print_report(results, args.repeat)
    if args.json:
        doc = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "tools": tool_versions(args, receivers),
            "corpus": {"count": len(files), "bytes": payload, "series_size": args.series_size},
            "options": {
                "workers": args.workers,
                "database_url": bool(args.database_url),
                "max_pdu": args.max_pdu,
                "repeat": args.repeat,
            },
            "results": [asdict(r) for r in results],
            "summary": [asdict(r) for r in summarise(results).values()],
        }
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.json}")
    return 0 if all(r.verified for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
