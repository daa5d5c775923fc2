"""SPEC R1: ``kill -9`` in the middle of a transfer loses no acknowledged instance.

Two DCMTK ``storescu`` processes (one association each, so both worker processes are busy)
send 300 generated CT instances in 6 series. ``storescu -v`` logs ``Sending file: PATH`` before
each C-STORE-RQ and ``Received Store Response (Success)`` when the 0000 response arrived; one
C-STORE is outstanding at a time per association, so every success line belongs to the last
file announced on that association. When 100 successes have been logged the server's parent
is killed with SIGKILL (its workers die with it through PR_SET_PDEATHSIG), storescu fails on
the broken connection, and the server is restarted on the same data folder and database.

What is asserted afterwards:

1. The kill really happened mid-transfer (at least 100, fewer than 300 acknowledged).
   Responses other than Success (a refusal such as A701) count as not acknowledged.
2. Every acknowledged instance (status 0000) is in the index, its file is readable by pydicom
   and its data set bytes are identical to those of the source file.
3. No half-written file is indexed: *every* index row, acknowledged or not, points to a
   complete file whose data set bytes are identical to the source.
4. ``pacsbox check`` with its default 60 s grace period exits 0 and says "consistent" (files
   that are younger than the grace period are not judged; a running server may be between
   writing and indexing them).
5. ``pacsbox check --grace 0`` finds no missing file and no size mismatch. It may find what a
   crash legitimately leaves behind: orphans (files written, not yet indexed) — each must be
   an instance that was NOT acknowledged — and temp files of interrupted writes. Exit code
   is 1 exactly when it found something.
6. ``pacsbox check --repair --grace 0`` exits 0, indexes the orphans (their bytes identical to
   the source) and deletes the temp files; a second ``check --grace 0`` says "consistent".
7. The restarted server works: storescu re-sends every instance that was not acknowledged,
   all get 0000; then all 300 are indexed, byte-identical, and ``check --grace 0`` is clean.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from pacsbox.archive.index.writer import INSTANCE
from tests.helpers import (
    Server,
    dataset_bytes,
    dcmtk_env,
    have,
    make_ct,
    open_server_archive,
    run_dcmtk,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(not have("storescu"), reason="DCMTK storescu is not installed"),
    pytest.mark.timeout(180),
]

N_SERIES = 6
PER_SERIES = 50  # 300 instances
SENDERS = 2  # parallel storescu processes (associations)
KILL_AFTER = 100  # acknowledged instances before SIGKILL
SUCCESS = "Received Store Response (Success)"


@dataclass
class Sender:
    """One storescu process and what its log said."""

    proc: subprocess.Popen
    acked: list[Path] = field(default_factory=list)
    other_responses: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def _generate(folder: Path) -> dict[str, Path]:
    """300 Part-10 CT files (64x64) in 2 studies x 3 series; returns SOP Instance UID -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    studies = [generate_uid(), generate_uid()]
    for s in range(N_SERIES):
        series = generate_uid()
        for i in range(PER_SERIES):
            ds = make_ct(
                studies[s % 2],
                series,
                patient_id=f"CRASH{s % 2}",
                rows=64,
                cols=64,
                instance_number=i + 1,
            )
            ds.SeriesNumber = s + 1
            path = folder / f"s{s}_{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[ds.SOPInstanceUID] = path
    return files


def _storescu(server: Server, paths: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(
        ["storescu", "-v", "-aet", "CRASHTEST", "-aec", server.ae_title, "127.0.0.1"]
        + [str(server.port)]
        + [str(p) for p in paths],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def _follow(sender: Sender, on_ack: threading.Semaphore) -> None:
    """Parse storescu's log as it streams: map each success response to its file."""
    current: Path | None = None
    assert sender.proc.stdout is not None
    for line in sender.proc.stdout:
        line = line.rstrip("\n")
        sender.log.append(line)
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif SUCCESS in line:
            assert current is not None, "a response before any request?"
            sender.acked.append(current)
            current = None
            on_ack.release()
        elif "Received Store Response" in line:
            sender.other_responses.append(line)


def _rows(server: Server) -> dict[str, tuple[str, int, bool]]:
    """SOP Instance UID -> (file_path, file_size, linked) of every index row."""
    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            rows = conn.execute(
                select(
                    INSTANCE.c.sop_instance_uid,
                    INSTANCE.c.file_path,
                    INSTANCE.c.file_size,
                    INSTANCE.c.linked,
                )
            ).all()
        root = arch.store.root
    finally:
        arch.engine.dispose()
    out = {}
    for uid, key, size, linked in rows:
        assert uid not in out, f"{uid} indexed twice"
        out[uid] = (str(Path(key) if linked else root / key), size, linked)
    return out


def _assert_complete(uid: str, stored: Path, source: Path) -> None:
    """The stored file is readable and carries the source's data set bytes unchanged."""
    ds = dcmread(stored)
    assert ds.SOPInstanceUID == uid
    assert dataset_bytes(stored) == dataset_bytes(source), f"{uid}: data set bytes differ"


def _check(server: Server, *args: str) -> tuple[int, dict, str]:
    result = server.cli("check", "--json", *args)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout), result.stdout + result.stderr


def test_kill9_mid_transfer_loses_no_acknowledged_instance(db_url, make_server, tmp_path):
    server = make_server(
        db_url,
        name="crash",
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
    )
    sources = _generate(tmp_path / "src")
    by_path = {path: uid for uid, path in sources.items()}
    paths = sorted(by_path)
    # each sender gets whole series: sender 0 series 0-2, sender 1 series 3-5
    chunks = [
        paths[i * len(paths) // SENDERS : (i + 1) * len(paths) // SENDERS] for i in range(SENDERS)
    ]

    acks = threading.Semaphore(0)
    senders = [Sender(_storescu(server, chunk)) for chunk in chunks]
    threads = [threading.Thread(target=_follow, args=(s, acks), daemon=True) for s in senders]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        for _ in range(KILL_AFTER):
            remaining = deadline - time.monotonic()
            if not acks.acquire(timeout=max(0.0, remaining)):
                logs = "\n".join(line for s in senders for line in s.log[-20:])
                pytest.fail(f"fewer than {KILL_AFTER} instances acknowledged in 60 s:\n{logs}")
        server.kill()
        killed_at = time.monotonic()
        for s in senders:
            s.proc.wait(timeout=60)
        for t in threads:
            t.join(timeout=10)
    finally:
        for s in senders:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
    assert time.monotonic() - killed_at < 60

    acked = {by_path[p] for s in senders for p in s.acked}
    assert len(acked) == sum(len(s.acked) for s in senders), "a file acknowledged twice"
    # (1) the crash hit the transfer in the middle
    refused = [r for s in senders for r in s.other_responses]
    assert KILL_AFTER <= len(acked) < len(sources), f"{len(acked)} acknowledged, {refused}"
    # Refusals (e.g. A701 after an index deadlock, see test_concurrent_ingest.py) are not
    # acknowledgements: R1 does not cover them; they are re-sent in step 7 like the rest.
    assert any(s.proc.returncode != 0 for s in senders), "storescu did not notice the crash"

    # Server.start() waits for "Ready." in its log: move the killed run's log out of the way
    server.log.rename(server.log.with_suffix(".killed"))
    server.start()

    # (2) every acknowledged instance is indexed and readable, bytes unchanged
    rows = _rows(server)
    lost = sorted(acked - rows.keys())
    assert not lost, f"{len(lost)} acknowledged instances are not indexed: {lost[:5]}"
    # (3) nothing half-written is indexed, acknowledged or not
    for uid, (stored, size, linked) in rows.items():
        assert not linked
        assert uid in sources, f"unknown instance {uid} in the index"
        assert Path(stored).stat().st_size == size, f"{uid}: size differs from the index"
        _assert_complete(uid, Path(stored), sources[uid])

    # (4) the default check (60 s grace for young files) is clean
    result = server.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "consistent" in result.stdout

    # (5) strict check: only what a crash may leave (orphans of unacknowledged, temp files)
    rc, report, text = _check(server, "--grace", "0")
    assert report["missing_files"] == 0 and report["size_mismatches"] == 0, text
    orphan_uids = set()
    for key in report["orphans"]:
        orphan = server.data_dir / "storage" / key
        uid = dcmread(orphan, stop_before_pixels=True).SOPInstanceUID
        assert uid not in acked, f"acknowledged {uid} is an unindexed orphan"
        assert uid not in rows
        orphan_uids.add(uid)
    found = report["orphan_files"] + report["temp_files"]
    assert rc == (1 if found else 0), text

    # (6) repair indexes the orphans, removes temp files; then strictly consistent
    result = server.cli("check", "--repair", "--grace", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    rc, report, text = _check(server, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", text
    assert not list((server.data_dir / "storage").rglob("*.tmp"))
    rows = _rows(server)
    assert orphan_uids <= rows.keys(), "repair did not index the orphans"
    for uid in orphan_uids:
        _assert_complete(uid, Path(rows[uid][0]), sources[uid])

    # (7) the restarted server takes the rest; then all 300 are there, byte-identical
    missing = sorted(sources[uid] for uid in sources.keys() - acked)
    result = run_dcmtk(
        ["storescu", "-v", "-aet", "CRASHTEST", "-aec", server.ae_title, "127.0.0.1"]
        + [str(server.port)]
        + [str(p) for p in missing]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(SUCCESS) == len(missing), result.stderr[-3000:]
    rows = _rows(server)
    assert rows.keys() == sources.keys()
    for uid, (stored, _size, _linked) in rows.items():
        _assert_complete(uid, Path(stored), sources[uid])
    rc, report, text = _check(server, "--grace", "0")
    assert rc == 0 and report["instances"] == len(sources) and report["files"] == len(sources)
    assert report["status"] == "consistent", text
