#!/usr/bin/env python3
"""C-MOVE throughput benchmark: pacsbox vs Orthanc sending one CT study to DCMTK storescp.

The script

1. generates (once, cached like ``bench/ingest.py``) a ``--count`` instance CT study (default
   500 instances of 512x512, 16 bit allocated / 12 bit stored, Explicit VR Little Endian, 5
   series of 100) with ``ingest.generate_corpus``;
2. starts one DCMTK ``storescp`` (``-aet STORESCP``, writing every instance to a temporary
   directory; ``--ignore`` is never used) that serves as the move destination, a fresh Orthanc
   (``DicomModalities`` holds STORESCP) and a fresh ``pacsbox serve`` (STORESCP registered with
   ``pacsbox ae add``), and stores the study into both with ``storescu``;
3. ``--repeat`` times, alternating pacsbox and Orthanc: empties the storescp directory, runs
   ``/usr/bin/movescu -S -aec <SCP> -aem STORESCP`` for the study, and records the movescu
   wall time, the files storescp wrote (must be ``--count``), the sender's CPU time and peak
   RSS; prints instances/s, MB/s (10^6 bytes of the stored Part-10 files per second) and the
   ratio pacsbox/Orthanc (> 1: pacsbox faster).

Every DCMTK process and Orthanc get ``TCP_NODELAY=1``. Everything listens on or connects to
127.0.0.1; every process is stopped by PID.

Example::

    .venv/bin/python bench/retrieve.py --repeat 5 --json /tmp/retrieve.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402 (sibling bench module)
    DEFAULT_CORPUS,
    RssSampler,
    dcmtk_env,
    free_port,
    generate_corpus,
    machine_info,
    stop_process,
    tree_cpu_seconds,
)
from query import (  # noqa: E402
    CALLING_AET,
    DEFAULT_PACSBOX,
    HOST,
    Target,
    _popen,
    http_json,
    pacsbox_env,
    start_orthanc,
    start_pacsbox,
    store_files,
    wait_ready,
)

DEST_AET = "STORESCP"


@dataclass
class MoveRun:
    sender: str
    repetition: int
    instances: int
    payload_bytes: int
    wall_s: float = 0.0
    inst_per_s: float = 0.0
    mb_per_s: float = 0.0
    received: int = 0
    movescu_rc: int = -1
    sender_cpu_s: float = 0.0
    sender_peak_rss_mib: float = 0.0
    ok: bool = False
    error: str = ""


def start_storescp(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    """One storescp for all runs; a single association at a time (no --fork needed)."""
    out = workdir / "received"
    out.mkdir(parents=True)
    port = free_port()
    cmd = [str(args.dcmtk_bin / "storescp"), "-aet", DEST_AET, "-od", str(out)]
    if args.bit_preserving:
        cmd.append("+B")
    if args.max_pdu:
        cmd += ["-pdu", str(args.max_pdu)]
    cmd.append(str(port))
    proc = _popen(cmd, dcmtk_env(), workdir / "storescp.log")
    return proc, port, out


def register_destination(args: argparse.Namespace, target: Target, dest_port: int) -> None:
    """``pacsbox ae add STORESCP --host 127.0.0.1 --port <port>`` on the server's settings."""
    env = pacsbox_env(target.workdir / "data", target.port, args.database_url or None, 0)
    res = subprocess.run(
        [str(args.pacsbox_bin), "ae", "add", DEST_AET, "--host", HOST, "--port", str(dest_port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"pacsbox ae add failed: {res.stdout}{res.stderr}")


def move_once(
    args: argparse.Namespace,
    target: Target,
    study_uid: str,
    received_dir: Path,
    repetition: int,
    payload: int,
) -> MoveRun:
    run = MoveRun(target.name, repetition, args.count, payload)
    for f in received_dir.iterdir():
        f.unlink()
    cmd = [str(args.dcmtk_bin / "movescu"), "-S", "-aet", CALLING_AET, "-aec", target.aet]
    cmd += ["-aem", DEST_AET, "-to", "60", HOST, str(target.port)]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    cpu_before = tree_cpu_seconds(target.proc.pid)
    try:
        with RssSampler(target.proc.pid) as rss:
            started = time.perf_counter()
            res = subprocess.run(
                cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=args.timeout
            )
            run.wall_s = time.perf_counter() - started
        run.movescu_rc = res.returncode
    except subprocess.TimeoutExpired:
        run.error = f"movescu did not finish within {args.timeout} s"
        return run
    run.sender_cpu_s = tree_cpu_seconds(target.proc.pid) - cpu_before
    run.sender_peak_rss_mib = rss.peak_kib / 1024
    run.received = sum(1 for f in received_dir.iterdir() if f.is_file())
    run.inst_per_s = args.count / run.wall_s
    run.mb_per_s = payload / run.wall_s / 1e6
    run.ok = run.movescu_rc == 0 and run.received == args.count
    if not run.ok:
        run.error = f"rc {res.returncode}, {run.received} received\n{res.stderr[-800:]}"
    return run


def check_received(received_dir: Path, sop_uids: set[str]) -> None:
    """The last run's files must be exactly the study's SOP Instances."""
    got = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received_dir.iterdir()}
    if got != sop_uids:
        raise RuntimeError(f"storescp holds {len(got & sop_uids)}/{len(sop_uids)} of the study")


def summarise(runs: list[MoveRun]) -> dict[str, MoveRun]:
    out = {}
    for name in dict.fromkeys(r.sender for r in runs):
        ok = [r for r in runs if r.sender == name and r.ok]
        if ok:
            med = statistics.median_low([r.wall_s for r in ok])
            out[name] = next(r for r in ok if r.wall_s == med)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=500, help="instances in the study (500)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus cache")
    p.add_argument("--repeat", type=int, default=5, help="moves per sender (interleaved)")
    p.add_argument("--senders", default="pacsbox,orthanc", help="comma list of pacsbox,orthanc")
    p.add_argument("--workers", type=int, default=0, help="PACSBOX_WORKERS (default per core)")
    p.add_argument("--database-url", default="", help="PACSBOX_DATABASE_URL for pacsbox")
    p.add_argument(
        "--max-pdu", type=int, default=0, help="storescp max receive PDU (default its 16 KiB)"
    )
    p.add_argument(
        "--no-bit-preserving",
        dest="bit_preserving",
        action="store_false",
        help="storescp without +B (decode and re-encode every data set)",
    )
    p.add_argument("--pacsbox-bin", type=Path, default=DEFAULT_PACSBOX)
    p.add_argument("--dcmtk-bin", type=Path, default=Path("/usr/bin"))
    p.add_argument("--orthanc-bin", type=Path, default=Path("/usr/sbin/Orthanc"))
    p.add_argument("--timeout", type=float, default=300, help="limit for one move, s")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    senders = [s for s in args.senders.split(",") if s]
    files = generate_corpus(args.corpus, args.count, 100)
    payload = sum(f.stat().st_size for f in files)
    first = dcmread(files[0], stop_before_pixels=True)
    study_uid = str(first.StudyInstanceUID)
    sop_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    studies = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files[::50]}
    if studies != {study_uid}:
        sys.exit(f"the corpus holds {len(studies)} studies; use --count ≤ 500")
    print(f"study {study_uid}: {len(files)} instances, {payload / 1e6:.1f} MB", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieve-", dir=args.tmp_dir))
    procs: list[subprocess.Popen] = []
    runs: list[MoveRun] = []
    info: dict[str, object] = {}
    try:
        scp, scp_port, received = start_storescp(args, tmp / "storescp")
        procs.append(scp)
        targets: list[Target] = []
        if "pacsbox" in senders:
            t = start_pacsbox(args, "pacsbox", tmp / "pacsbox", args.database_url or None)
            procs.append(t.proc)
            targets.append(t)
        if "orthanc" in senders:
            t = start_orthanc(
                args,
                tmp / "orthanc",
                DicomModalities={"storescp": [DEST_AET, HOST, scp_port]},
            )
            procs.append(t.proc)
            targets.append(t)
        for t in targets:
            wait_ready(args, t)
            if t.name == "pacsbox":
                register_destination(args, t, scp_port)
            secs = store_files(args, t, files, parts=1)
            info[f"load_s_{t.name}"] = round(secs, 1)
            print(f"  stored {len(files)} instances into {t.name} in {secs:.1f} s", flush=True)
            if t.http_port:
                count = http_json(t.http_port, "/statistics")["CountInstances"]
                if count != len(files):
                    raise RuntimeError(f"Orthanc holds {count} instances")
        for rep in range(1, args.repeat + 1):
            for t in targets:
                r = move_once(args, t, study_uid, received, rep, payload)
                runs.append(r)
                state = "ok" if r.ok else f"FAILED {r.error.splitlines()[0]}"
                print(
                    f"  {t.name} #{rep}: {r.wall_s:.2f} s, {r.inst_per_s:.0f} inst/s, "
                    f"{r.mb_per_s:.1f} MB/s, CPU {r.sender_cpu_s:.2f} s, {state}",
                    flush=True,
                )
                if r.ok and rep == args.repeat:
                    check_received(received, sop_uids)
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                stop_process(proc)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = summarise(runs)
    print(f"\nC-MOVE of {args.count} CT instances ({payload / 1e6:.1f} MB) to storescp")
    head = (
        f"{'sender':<8} {'runs ok':>7} {'wall s':>7} {'inst/s':>7} {'range inst/s':>14} "
        f"{'MB/s':>6} {'CPU s':>6} {'peak RSS MiB':>12}"
    )
    print(head)
    print("-" * len(head))
    for name, r in summary.items():
        mine = [x.inst_per_s for x in runs if x.sender == name and x.ok]
        print(
            f"{name:<8} {len(mine):>7} {r.wall_s:>7.2f} {r.inst_per_s:>7.1f} "
            f"{min(mine):>6.0f}–{max(mine):<7.0f} {r.mb_per_s:>6.1f} {r.sender_cpu_s:>6.2f} "
            f"{r.sender_peak_rss_mib:>12.1f}"
        )
    ratio = None
    if "pacsbox" in summary and "orthanc" in summary:
        ratio = summary["pacsbox"].inst_per_s / summary["orthanc"].inst_per_s
        print(f"\nratio pacsbox/Orthanc (throughput, medians): {ratio:.2f}")
    for r in runs:
        if not r.ok:
            print(f"\n{r.sender} #{r.repetition}: {r.error}")
    if args.json:
        doc = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "payload_bytes": payload,
            "runs": [asdict(r) for r in runs],
            "summary": {k: asdict(v) for k, v in summary.items()},
            "ratio_pacsbox_orthanc": ratio,
            "info": info,
        }
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
