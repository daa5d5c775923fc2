#!/usr/bin/env python3
"""sendtopacs worklist benchmark (SPEC S2): how long a worklist search and the automatic
file-name mapping take.

The script writes ``--entries`` worklist items (one patient each, modality XC, today) for DCMTK
``wlmscpfs`` (started with ``TCP_NODELAY=1`` on a free loopback port) and serves the same
records from a small threaded HTTP JSON server, then measures (median of ``--repeat``):

1. one MWL search by Patient ID through :func:`pacsbox.sendtopacs.worklist.search` (a new
   association per search, as the command and the service do) — and, as the reference, the
   same query with DCMTK ``findscu -W`` (includes its process start, ~40 ms here);
2. one MWL search that returns every entry (modality XC, today), and the same with
   ``findscu -W`` (which only prints what it receives);
3. one HTTP JSON search by Patient ID;
4. :func:`pacsbox.sendtopacs.naming.auto_map` of ``--files`` files named
   ``<PatientID>_<LastName>_<n>.jpg``: every file its own patient (one search per file) and
   ten files per patient (one search per ten files), in files/s.

The machine is shared and noisy: compare ratios, not absolute numbers.

Example::

    .venv/bin/python bench/sendtopacs_worklist.py --entries 500 --files 200 --repeat 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsbox.sendtopacs.naming import auto_map
from pacsbox.sendtopacs.worklist import WorklistDevice, WorklistQuery, search

TODAY = dt.date.today().strftime("%Y%m%d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_worklist(folder: Path, n: int) -> list[dict[str, str]]:
    records = []
    for i in range(n):
        pid, last = f"BW{i:05d}", f"Name{i:05d}"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber = f"A{i:05d}"
        ds.PatientName = f"{last}^Bench"
        ds.PatientID = pid
        ds.PatientBirthDate = "19800101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = generate_uid()
        ds.RequestedProcedureID = f"RP{i}"
        ds.RequestedProcedureDescription = "bench"
        sps = Dataset()
        sps.Modality = "XC"
        sps.ScheduledStationAETitle = "CAM1"
        sps.ScheduledProcedureStepStartDate = TODAY
        sps.ScheduledProcedureStepStartTime = "080000"
        sps.ScheduledPerformingPhysicianName = ""
        sps.ScheduledProcedureStepDescription = "photo"
        sps.ScheduledProcedureStepID = f"S{i}"
        ds.ScheduledProcedureStepSequence = [sps]
        ds.save_as(folder / f"{pid}.wl", enforce_file_format=True)
        records.append({"pid": pid, "last": last, "first": "Bench", "acc": f"A{i:05d}"})
    return records


class Http:
    def __init__(self, records: list[dict[str, str]]) -> None:
        by_pid = {r["pid"]: r for r in records}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                pid = q.get("pid", "")
                out = [by_pid[pid]] if pid in by_pid else ([] if pid else records)
                body = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def device(self) -> WorklistDevice:
        port = self.server.server_address[1]
        return WorklistDevice(
            "his",
            "http",
            url=f"http://127.0.0.1:{port}/orders?pid={{patient_id}}",
            mapping={
                "patient_id": "pid",
                "last_name": "last",
                "first_name": "first",
                "accession_number": "acc",
            },
            max_results=100_000,
        )


def median_ms(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=500)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="wlbench-"))
    folder = tmp / "db" / "WLSCP"
    folder.mkdir(parents=True)
    (folder / "lockfile").write_bytes(b"")
    records = write_worklist(folder, args.entries)
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        ["/usr/bin/wlmscpfs", "-dfp", str(tmp / "db"), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    http = Http(records)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("wlmscpfs did not start")
            time.sleep(0.05)
        mwl = WorklistDevice("wl", "mwl", "WLSCP", "127.0.0.1", port, max_results=100_000)
        target = records[len(records) // 2]["pid"]
        one = median_ms(lambda: search(mwl, WorklistQuery(patient_id=target)), args.repeat)
        (tmp / "q.dump").write_text(f"(0010,0020) LO [{target}]\n(0040,0100) SQ\n")
        findscu = median_ms(
            lambda: subprocess.run(
                ["/usr/bin/findscu", "-W", "-aec", "WLSCP", "-k", f"PatientID={target}",
                 "-k", "PatientName", "-k", "AccessionNumber", "127.0.0.1", str(port)],
                env=env, capture_output=True, check=True,
            ),
            args.repeat,
        )  # fmt: skip
        full = median_ms(
            lambda: search(mwl, WorklistQuery(modality="XC", date="today")),
            max(3, args.repeat // 4),
        )
        findscu_all = median_ms(
            lambda: subprocess.run(
                ["/usr/bin/findscu", "-W", "-aec", "WLSCP",
                 "-k", "ScheduledProcedureStepSequence[0].Modality=XC",
                 "-k", f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={TODAY}",
                 "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber",
                 "127.0.0.1", str(port)],
                env=env, capture_output=True, check=True,
            ),
            max(3, args.repeat // 4),
        )  # fmt: skip
        hdev = http.device()
        one_http = median_ms(lambda: search(hdev, WorklistQuery(patient_id=target)), args.repeat)

        files_dir = tmp / "files"
        files_dir.mkdir()
        distinct, grouped = [], []
        for i in range(args.files):
            r = records[i % len(records)]
            p = files_dir / f"{r['pid']}_{r['last']}_{i}.jpg"
            p.write_bytes(b"\xff\xd8\xff\xe0")
            distinct.append(p)
            g = records[(i // 10) % len(records)]
            q = files_dir / f"{g['pid']}_{g['last']}_{i}_g.jpg"
            q.write_bytes(b"\xff\xd8\xff\xe0")
            grouped.append(q)
        pattern = "{PatientID}_{LastName}_*.jpg"
        t0 = time.perf_counter()
        res = auto_map(distinct, mwl, pattern)
        t_distinct = time.perf_counter() - t0
        assert all(m.status == "mapped" for m in res), [
            m.message for m in res if m.status != "mapped"
        ][:3]
        t0 = time.perf_counter()
        res = auto_map(grouped, mwl, pattern)
        t_grouped = time.perf_counter() - t0
        assert all(m.status == "mapped" for m in res)
    finally:
        proc.terminate()
        proc.wait(10)
        http.server.shutdown()

    out = {
        "entries": args.entries,
        "files": args.files,
        "mwl_search_one_ms": round(one, 1),
        "findscu_one_ms": round(findscu, 1),
        "mwl_search_all_ms": round(full, 1),
        "findscu_all_ms": round(findscu_all, 1),
        "http_search_one_ms": round(one_http, 1),
        "auto_map_distinct_files_per_s": round(args.files / t_distinct, 1),
        "auto_map_10_per_patient_files_per_s": round(args.files / t_grouped, 1),
        "python": sys.version.split()[0],
    }
    print(f"worklist entries: {args.entries}; files mapped: {args.files}")
    print(f"MWL search by Patient ID (1 match)      {one:8.1f} ms   findscu -W: {findscu:.1f} ms")
    print(
        f"MWL search returning all {args.entries:<6}        {full:8.1f} ms   "
        f"findscu -W: {findscu_all:.1f} ms"
    )
    print(f"HTTP JSON search by Patient ID          {one_http:8.1f} ms")
    rate1 = out["auto_map_distinct_files_per_s"]
    rate10 = out["auto_map_10_per_patient_files_per_s"]
    print(f"auto_map, one patient per file          {rate1:8.1f} files/s")
    print(f"auto_map, ten files per patient         {rate10:8.1f} files/s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
