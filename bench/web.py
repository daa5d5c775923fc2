#!/usr/bin/env python3
"""Web benchmark: rendered images, QIDO-RS and WADO-RS — pacsbox vs Orthanc (+ its DICOMweb
plugin) in one run.

Three phases (``--phases``, default ``rendered,qido,wado``), each bounded in time:

1. **rendered**: one 512×512 CT frame (a generated phantom: air, a water ellipse with a bone
   ring and two lungs, Gaussian noise of 10 HU, stored 12-bit with Rescale Intercept −1024
   and a 40/400 window) is stored with ``storescu`` into a fresh ``pacsbox serve`` (HTTP on)
   and a fresh Orthanc with the DICOMweb plugin. Then, interleaved, ``--render-repeat``
   requests each of pacsbox ``/dicom-web/.../instances/{i}/rendered`` (JPEG; HTTP Basic,
   one keep-alive connection), Orthanc ``/instances/{id}/frames/0/rendered`` (its native
   route; ``/preview`` when that route is missing) and Orthanc's DICOMweb ``.../rendered``.
   Median and p90 of the request latency (send → last byte) are reported; pacsbox's
   ``/thumbnail`` and PNG output are measured too (not compared).
2. **qido**: QIDO-RS study searches (the C-FIND queries of ``bench/query.py``: PatientID,
   PatientName SMITH*, a 1 % StudyDate range, AccessionNumber, ModalitiesInStudy=MR, MR in
   the date range, and the series of one study) — (a) at an equal size (``--qido-size``,
   default 2000 studies, the tiny corpus of ``bench/query.py``, stored with ``storescu`` into
   both) pacsbox vs Orthanc + DICOMweb plugin, match counts checked equal; (b) pacsbox alone on
   the ``--studies`` (default 100,000 studies / 300,000 series / 1,000,000 instances) index
   built by ``bench/query.py``'s ``build_sqlite_index`` (the ingest path's own index writer).
3. **wado**: WADO-RS retrieve of a whole ``--count`` (default 500) instance CT study
   (``bench/ingest.py``'s corpus, 512×512×16 bit, Explicit VR LE) as ``multipart/related;
   type="application/dicom"; transfer-syntax=*`` from both, ``--wado-repeat`` times
   alternating; MB/s = 10^6 bytes of the response body per second; the part count is checked.

Targets (issue 4): ``/rendered`` median < 30 ms, QIDO median < 50 ms at 100k studies, WADO-RS
study retrieve ≥ 1.0× Orthanc. Every DCMTK process and Orthanc get ``TCP_NODELAY=1``; all
servers listen on 127.0.0.1 and are stopped by PID. ``--json FILE`` keeps every sample.

Example::

    .venv/bin/python bench/web.py --json /tmp/web.json
    .venv/bin/python bench/web.py --quick
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402 (sibling bench module)
    DEFAULT_CORPUS,
    generate_corpus,
    machine_info,
    stop_process,
    tree_cpu_seconds,
)
from query import (  # noqa: E402
    DEFAULT_PACSBOX,
    HOST,
    Query,
    Target,
    _popen,
    build_queries,
    build_sqlite_index,
    free_port,
    generate,
    pacsbox_env,
    pct,
    shape,
    start_orthanc,
    store_files,
    wait_ready,
    write_tiny_corpus,
)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password-1"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# --------------------------------------------------------------------------- servers


def start_web_pacsbox(args: argparse.Namespace, name: str, workdir: Path) -> Target:
    """``pacsbox serve`` with DICOM and HTTP on free loopback ports and a viewer account."""
    port, http_port = free_port(), free_port()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = pacsbox_env(data, port, None, args.workers)
    env["PACSBOX_HTTP_PORT"] = str(http_port)
    env["PACSBOX_HTTP_WORKERS"] = str(args.http_workers)
    cmd = [str(args.pacsbox_bin), "user", "add", BENCH_USER, "--role", "viewer"]
    res = subprocess.run(
        [*cmd, "--password", BENCH_PASSWORD],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"pacsbox user add failed: {res.stderr[-500:]}")
    log = workdir / "pacsbox.log"
    proc = _popen([str(args.pacsbox_bin), "serve"], env, log)
    target = Target(name, "PACSBOX", port, proc, workdir, log, http_port=0)
    target.note = str(http_port)
    return target


def web_port(t: Target) -> int:
    return int(t.note) if t.name.startswith("pacsbox") else t.http_port


def wait_http(t: Target, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            raise RuntimeError(f"{t.name} exited:\n{t.log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, web_port(t), timeout=5)
            conn.request("GET", "/health" if t.name.startswith("pacsbox") else "/system")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.3)
    raise RuntimeError(f"{t.name}: HTTP did not answer within {timeout:.0f} s")


def start_orthanc_web(args: argparse.Namespace, workdir: Path) -> Target:
    plugins = [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.is_file() else []
    t = start_orthanc(
        args,
        workdir,
        Plugins=plugins,
        DicomWeb={"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    )
    t.note = "dicomweb" if plugins else "no dicomweb plugin"
    return t


def start_both(args: argparse.Namespace, tmp: Path, tag: str) -> list[Target]:
    targets = [
        start_web_pacsbox(args, "pacsbox", tmp / f"pacsbox-{tag}"),
        start_orthanc_web(args, tmp / f"orthanc-{tag}"),
    ]
    for t in targets:
        wait_ready(args, t)
        wait_http(t)
    return targets


# --------------------------------------------------------------------------- HTTP client


class Client:
    """One keep-alive HTTP connection to one server (Basic credentials for pacsbox)."""

    def __init__(self, t: Target) -> None:
        self.name = t.name
        self.port = web_port(t)
        self.headers: dict[str, str] = {}
        if t.name.startswith("pacsbox"):
            token = base64.b64encode(f"{BENCH_USER}:{BENCH_PASSWORD}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.conn = http.client.HTTPConnection(HOST, self.port, timeout=300)

    def get(self, path: str, accept: str | None = None) -> tuple[int, bytes, float, str]:
        """(status, body, ms from request to last byte, content type)."""
        headers = dict(self.headers)
        if accept:
            headers["Accept"] = accept
        started = time.perf_counter()
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=300)
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - started) * 1000
        return resp.status, body, ms, resp.getheader("Content-Type", "")

    def post_json(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.conn.request("POST", path, body=data, headers=self.headers)
        return json.loads(self.conn.getresponse().read())

    def close(self) -> None:
        self.conn.close()


@dataclass
class Sample:
    phase: str
    target: str
    case: str
    ms: float
    status: int
    size: int
    matches: int = -1


@dataclass
class Row:
    phase: str
    target: str
    case: str
    runs: int
    median_ms: float
    p90_ms: float
    size: int
    matches: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


def rows_of(samples: list[Sample]) -> list[Row]:
    out: list[Row] = []
    keys = dict.fromkeys((s.phase, s.target, s.case) for s in samples)
    for phase, target, case in keys:
        mine = [s for s in samples if (s.phase, s.target, s.case) == (phase, target, case)]
        ok = [s.ms for s in mine if s.status == 200]
        out.append(
            Row(
                phase,
                target,
                case,
                len(ok),
                statistics.median(ok) if ok else float("nan"),
                pct(ok, 0.9),
                mine[-1].size,
                mine[-1].matches,
            )
        )
    return out


# --------------------------------------------------------------------------- rendered


def phantom_ct(path: Path, seed: int = 7) -> Dataset:
    """A 512×512 CT slice that looks like one (JPEG of noise would be unrepresentative)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:512, 0:512]
    hu = np.full((512, 512), -1000.0)
    body = ((x - 256) / 200) ** 2 + ((y - 256) / 150) ** 2 <= 1
    hu[body] = 40.0
    ring = body & (((x - 256) / 185) ** 2 + ((y - 256) / 135) ** 2 >= 1)
    hu[ring] = 700.0
    for cx in (190, 322):
        hu[((x - cx) / 50) ** 2 + ((y - 240) / 80) ** 2 <= 1] = -800.0
    hu += rng.normal(0, 10, hu.shape)
    stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Render", "RENDER1", "CT"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "R1", "1"
    ds.SeriesNumber, ds.InstanceNumber, ds.ReferringPhysicianName = 1, 1, ""
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return ds


def orthanc_id(client: Client, sop_uid: str) -> str:
    found = client.post_json("/tools/lookup", sop_uid.encode())
    ids = [f["ID"] for f in found if f.get("Type") == "Instance"]
    if not ids:
        raise RuntimeError(f"Orthanc does not know {sop_uid}")
    return ids[0]


def rendered_phase(args: argparse.Namespace, tmp: Path) -> tuple[list[Sample], dict]:
    path = tmp / "phantom.dcm"
    ds = phantom_ct(path)
    info: dict[str, Any] = {"image": "512x512 CT phantom, 12-bit, window 40/400"}
    targets = start_both(args, tmp, "rendered")
    clients: list[Client] = []
    samples: list[Sample] = []
    try:
        for t in targets:
            store_files(args, t, [path], parts=1)
        clients = [Client(t) for t in targets]
        pb, orth = clients
        wado = (
            f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        oid = orthanc_id(orth, ds.SOPInstanceUID)
        native = f"/instances/{oid}/frames/0/rendered"
        if orth.get(native)[0] != 200:
            native = f"/instances/{oid}/preview"
        info["orthanc_native_route"] = native.split(oid)[1]
        cases: list[tuple[Client, str, str, str | None]] = [
            (pb, "rendered jpeg", wado + "/rendered", "image/jpeg"),
            (orth, "native " + info["orthanc_native_route"], native, "image/jpeg"),
            (pb, "rendered png", wado + "/rendered", "image/png"),
            (pb, "thumbnail", wado + "/thumbnail", "image/jpeg"),
        ]
        if targets[1].note == "dicomweb":
            cases.insert(2, (orth, "dicomweb rendered", wado + "/rendered", "image/jpeg"))
        for client, case, url, accept in cases:  # warm-up (and check the answers)
            for _ in range(5):
                status, body, _ms, ctype = client.get(url, accept)
            if status != 200:
                print(f"  {client.name} {case}: HTTP {status} {body[:200]!r}", flush=True)
            info[f"{client.name} {case}"] = {"status": status, "type": ctype, "bytes": len(body)}
        for rnd in range(args.render_repeat):
            for client, case, url, accept in cases:
                status, body, ms, _ctype = client.get(url, accept)
                samples.append(Sample("rendered", client.name, case, ms, status, len(body)))
            if rnd and rnd % 100 == 0:
                print(f"  rendered: round {rnd}/{args.render_repeat}", flush=True)
        for t in targets:
            info[f"cpu_s_{t.name}"] = round(tree_cpu_seconds(t.proc.pid), 1)
    finally:
        for c in clients:
            c.close()
        for t in targets:
            stop_process(t.proc)
    return samples, info


# --------------------------------------------------------------------------- QIDO-RS


def qido_path(q: Query, limit: int = 0) -> str:
    """The QIDO-RS request of a bench/query.py C-FIND query (matching keys only; ``limit``
    > 0 asks for one page of that many studies, as a study list does)."""
    match = {k: v for k, v in q.keys.items() if v}
    if q.level == "SERIES":
        study = match.pop("StudyInstanceUID")
        base = f"/dicom-web/studies/{study}/series"
    else:
        base = "/dicom-web/studies"
        if limit:
            match["limit"] = str(limit)
    return base + ("?" + urllib.parse.urlencode(match, safe="*,") if match else "")


def measure_qido(
    args: argparse.Namespace, clients: list[Client], queries: list[Query], phase: str
) -> list[Sample]:
    samples: list[Sample] = []
    for client in clients:  # warm-up
        for q in queries:
            client.get(qido_path(q, args.qido_limit), "application/dicom+json")
    spent: dict[tuple[str, str], float] = {}
    for _rnd in range(args.qido_repeat):
        for client in clients:
            for q in queries:
                key = (client.name, q.name)
                if spent.get(key, 0.0) > args.budget:
                    continue
                path = qido_path(q, args.qido_limit)
                status, body, ms, _ = client.get(path, "application/dicom+json")
                n = len(json.loads(body)) if status == 200 and body.strip() else 0
                samples.append(Sample(phase, client.name, q.name, ms, status, len(body), n))
                spent[key] = spent.get(key, 0.0) + ms / 1000
    return samples


def qido_phase(args: argparse.Namespace, tmp: Path) -> tuple[list[Sample], dict]:
    samples: list[Sample] = []
    info: dict[str, Any] = {}
    if args.qido_size:
        studies = args.qido_size
        series_total, _ = shape(studies)
        corpus = generate(studies, series_total, series_total)
        files = write_tiny_corpus(corpus, args.corpus_root / f"query-{studies}")
        queries = build_queries(corpus)
        info["equal"] = {"studies": studies, "series": series_total, "instances": len(files)}
        targets = start_both(args, tmp, "qido")
        clients: list[Client] = []
        try:
            for t in targets:
                secs = store_files(args, t, files)
                print(f"  stored {len(files)} instances into {t.name} in {secs:.1f} s", flush=True)
            clients = [Client(t) for t in targets]
            if targets[1].note != "dicomweb":
                clients = clients[:1]
            samples += measure_qido(args, clients, queries, f"qido {studies}")
        finally:
            for c in clients:
                c.close()
            for t in targets:
                stop_process(t.proc)
    if args.studies:
        studies = args.studies
        series_total, instance_total = shape(studies)
        corpus = generate(studies, series_total, instance_total)
        queries = build_queries(corpus)
        workdir = tmp / "pacsbox-large"
        print(f"  building the {studies}-study index ...", flush=True)
        info["large"] = {
            "studies": studies,
            "series": corpus.n_series,
            "instances": corpus.n_instances,
            "build_s": round(build_sqlite_index(corpus, workdir / "data"), 1),
        }
        t = start_web_pacsbox(args, "pacsbox", workdir)
        client = None
        try:
            wait_ready(args, t)
            wait_http(t)
            client = Client(t)
            samples += measure_qido(args, [client], queries, f"qido {studies}")
        finally:
            if client:
                client.close()
            stop_process(t.proc)
    return samples, info


# --------------------------------------------------------------------------- WADO-RS


@dataclass
class Retrieve:
    target: str
    repetition: int
    seconds: float
    bytes: int
    parts: int
    status: int
    cpu_s: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def count_parts(body: bytes, ctype: str) -> int:
    boundary = ""
    for param in ctype.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    return body.count(b"--" + boundary.encode() + b"\r\n") if boundary else 0


def wado_phase(args: argparse.Namespace, tmp: Path) -> tuple[list[Retrieve], dict]:
    files = generate_corpus(args.corpus, args.count, 100)
    first = dcmread(files[0], stop_before_pixels=True)
    study = str(first.StudyInstanceUID)
    payload = sum(f.stat().st_size for f in files)
    info: dict[str, Any] = {"instances": len(files), "file_bytes": payload, "study": study}
    targets = start_both(args, tmp, "wado")
    runs: list[Retrieve] = []
    clients: list[Client] = []
    try:
        for t in targets:
            secs = store_files(args, t, files, parts=2)
            print(f"  stored {len(files)} instances into {t.name} in {secs:.1f} s", flush=True)
        clients = [Client(t) for t in targets]
        if targets[1].note != "dicomweb":
            clients = clients[:1]
        for rep in range(args.wado_repeat):
            for client, t in zip(clients, targets, strict=False):
                cpu0 = tree_cpu_seconds(t.proc.pid)
                status, body, ms, ctype = client.get(f"/dicom-web/studies/{study}", MULTIPART_DICOM)
                cpu = tree_cpu_seconds(t.proc.pid) - cpu0
                r = Retrieve(
                    t.name, rep + 1, ms / 1000, len(body), count_parts(body, ctype), status, cpu
                )
                runs.append(r)
                print(
                    f"  {t.name} #{rep + 1}: HTTP {status}, {r.parts} parts, "
                    f"{r.bytes / 1e6:.1f} MB in {r.seconds:.2f} s = {r.mb_per_s:.0f} MB/s, "
                    f"server CPU {cpu:.2f} s",
                    flush=True,
                )
                del body
    finally:
        for c in clients:
            c.close()
        for t in targets:
            stop_process(t.proc)
    return runs, info


# --------------------------------------------------------------------------- report


def print_rows(rows: list[Row]) -> None:
    head = f"{'phase':<12} {'server':<8} {'case':<28} {'runs':>4} {'median':>8} {'p90':>8} {'bytes':>8} {'match':>6}"  # noqa: E501
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.phase:<12} {r.target:<8} {r.case:<28} {r.runs:>4} {r.median_ms:>8.1f} "
            f"{r.p90_ms:>8.1f} {r.size:>8} {r.matches:>6}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--phases", default="rendered,qido,wado")
    p.add_argument("--render-repeat", type=int, default=200, help="requests per case")
    p.add_argument("--qido-size", type=int, default=2000, help="studies at equal size (0: skip)")
    p.add_argument("--studies", type=int, default=100_000, help="pacsbox-only index (0: skip)")
    p.add_argument("--qido-repeat", type=int, default=30, help="rounds per query")
    p.add_argument(
        "--qido-limit", type=int, default=100, help="QIDO limit (a page; 0: all matches)"
    )
    p.add_argument("--budget", type=float, default=20.0, help="s per server/query, then stop")
    p.add_argument("--count", type=int, default=500, help="instances in the WADO-RS study")
    p.add_argument("--wado-repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="--studies 5000 --qido-size 300, fewer")
    p.add_argument("--workers", type=int, default=0, help="PACSBOX_WORKERS (DICOM)")
    p.add_argument("--http-workers", type=int, default=1, help="PACSBOX_HTTP_WORKERS")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="CT corpus (ingest.py)")
    p.add_argument("--pacsbox-bin", type=Path, default=DEFAULT_PACSBOX)
    p.add_argument("--dcmtk-bin", type=Path, default=Path("/usr/bin"))
    p.add_argument("--orthanc-bin", type=Path, default=Path("/usr/sbin/Orthanc"))
    p.add_argument("--timeout", type=float, default=600, help="limit for one subprocess, s")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.studies, args.qido_size, args.render_repeat = 5000, 300, 50
        args.qido_repeat, args.wado_repeat, args.count = 10, 3, 200
    args.phases = [x for x in args.phases.split(",") if x]
    args.corpus_root = args.corpus.parent  # bench/.corpus, shared with query.py
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not DICOMWEB_PLUGIN.is_file():
        print(f"note: {DICOMWEB_PLUGIN} missing (apt-get install -y orthanc-dicomweb)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-", dir=args.tmp_dir))
    samples: list[Sample] = []
    retrieves: list[Retrieve] = []
    infos: dict[str, Any] = {}
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"load average: {os.getloadavg()}", flush=True)
        if "rendered" in args.phases:
            print("rendered: one 512x512 CT frame", flush=True)
            s, infos["rendered"] = rendered_phase(args, tmp)
            samples += s
        if "qido" in args.phases:
            print("qido: study searches", flush=True)
            s, infos["qido"] = qido_phase(args, tmp)
            samples += s
        if "wado" in args.phases:
            print(f"wado: retrieve a {args.count}-instance study", flush=True)
            retrieves, infos["wado"] = wado_phase(args, tmp)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    rows = rows_of(samples)
    print("\nLatency, ms (request sent → last byte; one keep-alive connection per server)")
    print_rows(rows)
    verdicts: dict[str, Any] = {}
    by = {(r.phase, r.target, r.case): r for r in rows}
    mismatches = []
    for r in rows:
        if r.phase.startswith("qido") and r.target == "pacsbox":
            o = by.get((r.phase, "orthanc", r.case))
            if o is not None and o.matches != r.matches:
                mismatches.append(f"{r.phase} {r.case}: pacsbox {r.matches}, Orthanc {o.matches}")
    rendered = by.get(("rendered", "pacsbox", "rendered jpeg"))
    if rendered:
        verdicts["rendered_median_ms"] = round(rendered.median_ms, 2)
        verdicts["rendered_target_met"] = rendered.median_ms < 30
        for r in rows:
            if r.phase == "rendered" and r.target == "orthanc":
                verdicts[f"rendered_ratio_vs_orthanc {r.case}"] = round(
                    rendered.median_ms / r.median_ms, 2
                )
    large = [r for r in rows if r.phase == f"qido {args.studies}"]
    if large:
        worst = max(large, key=lambda r: r.median_ms)
        verdicts["qido_large_worst_median_ms"] = round(worst.median_ms, 2)
        verdicts["qido_large_worst_query"] = worst.case
        verdicts["qido_target_met"] = worst.median_ms < 50
    if retrieves:
        print("\nWADO-RS study retrieve (multipart/related; application/dicom)")
        for name in dict.fromkeys(r.target for r in retrieves):
            ok = [r for r in retrieves if r.target == name and r.status == 200]
            if not ok:
                print(f"  {name}: no successful retrieve")
                continue
            mbs = statistics.median(r.mb_per_s for r in ok)
            secs = statistics.median(r.seconds for r in ok)
            cpu = statistics.median(r.cpu_s for r in ok)
            verdicts[f"wado_mb_s_{name}"] = round(mbs, 1)
            print(
                f"  {name:<8} {len(ok)} runs, median {secs:.2f} s, {mbs:.0f} MB/s "
                f"(range {min(r.mb_per_s for r in ok):.0f}–{max(r.mb_per_s for r in ok):.0f}), "
                f"{ok[0].parts} parts, server CPU {cpu:.2f} s"
            )
        if "wado_mb_s_pacsbox" in verdicts and "wado_mb_s_orthanc" in verdicts:
            ratio = verdicts["wado_mb_s_pacsbox"] / verdicts["wado_mb_s_orthanc"]
            verdicts["wado_ratio_pacsbox_orthanc"] = round(ratio, 2)
            verdicts["wado_target_met"] = ratio >= 1.0
    print("\nTargets:", json.dumps(verdicts, indent=1))
    for m in mismatches:
        print("MATCH COUNT DIFFERS:", m)
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        doc = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
            "retrieves": [{**asdict(r), "mb_per_s": r.mb_per_s} for r in retrieves],
            "verdicts": verdicts,
            "info": infos,
            "samples": [asdict(s) for s in samples],
        }
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {args.json}")
    failed = any(math.isnan(r.median_ms) for r in rows) or mismatches
    failed = failed or any(r.status != 200 for r in retrieves)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
