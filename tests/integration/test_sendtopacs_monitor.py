"""sendtopacs folder monitor (SPEC S6) against a real pacsbox: 200 files dropped (some written
slowly while kept open, some invalid, some DICOM) → every valid one stored once, every invalid
one in ``<failed>/YYYY-MM-DD/`` with a reason file; the service killed with SIGKILL midway and
restarted loses and duplicates nothing; a destination that is down and then comes up gets
the files through the retry path; add-to-list mode; the journal's states."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from pacsbox.sendtopacs.monitor import (
    MonitorConfig,
    MonitorError,
    MonitorSet,
    open_for_writing,
    parse_monitors,
)
from pacsbox.sendtopacs.settings import Device, Settings
from tests.helpers import VENV_BIN, Server, free_port, make_ct, open_server_archive, server_env

PERMISSIVE = {"PACSBOX_PERMISSIVE_AES": "true", "PACSBOX_PERMISSIVE_AES_ENABLED": "true"}


def png_bytes(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Drop:
    """What a test dropped into a watched folder."""

    valid: list[Path] = field(default_factory=list)
    invalid: list[Path] = field(default_factory=list)
    slow: list[Path] = field(default_factory=list)
    dicom_uids: set[str] = field(default_factory=set)
    writers: list[threading.Thread] = field(default_factory=list)

    def join(self) -> None:
        for t in self.writers:
            t.join(60)


def drop_files(
    folder: Path, total: int = 200, invalid: int = 14, slow: int = 6, dicom: int = 20
) -> Drop:
    """Write ``total`` files into ``folder`` (and a sub-folder): PNGs, DICOM files, invalid
    files (garbage with an image extension, an unknown type, a truncated JPEG, a DICOM file
    with a broken header) and ``slow`` PNGs written in chunks over ~3 s while kept open (each
    pause longer than the monitor's stability interval)."""
    drop = Drop()
    sub = folder / "sub" / "deeper"
    sub.mkdir(parents=True, exist_ok=True)
    bad_kinds = [
        ("bad{}.png", b"this is not a PNG at all"),
        ("notes{}.xyz", b"unknown kind of file"),
        ("cut{}.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01"),
        ("broken{}.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff"),
    ]
    for i in range(invalid):
        name, data = bad_kinds[i % len(bad_kinds)]
        path = (sub if i % 2 else folder) / name.format(i)
        path.write_bytes(data)
        drop.invalid.append(path)
    for i in range(dicom):
        ds = make_ct(patient_id=f"MON{i}")
        path = (sub if i % 3 == 0 else folder) / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        drop.dicom_uids.add(str(ds.SOPInstanceUID))
        drop.valid.append(path)

    def slow_writer(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            step = len(data) // 4 + 1
            for k in range(0, len(data), step):
                fh.write(data[k : k + step])
                fh.flush()
                time.sleep(0.8)

    for i in range(slow):
        path = folder / f"slow{i}.png"
        t = threading.Thread(target=slow_writer, args=(path, png_bytes(10_000 + i, (64, 64))))
        t.start()
        drop.writers.append(t)
        drop.slow.append(path)
        drop.valid.append(path)
    for i in range(total - invalid - slow - dicom):
        path = (sub if i % 5 == 0 else folder) / f"photo{i:03d}.png"
        tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed in
        tmp.write_bytes(png_bytes(i))
        os.replace(tmp, path)
        drop.valid.append(path)
    assert len(drop.valid) + len(drop.invalid) == total
    return drop


def journal_counts(state_dir: Path) -> dict[str, int]:
    db = state_dir / "monitor.sqlite"
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall())
    except sqlite3.OperationalError:
        return {}


def journal_uids(state_dir: Path, state: str = "done") -> list[str]:
    with sqlite3.connect(f"file:{state_dir / 'monitor.sqlite'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT o.sop_instance_uid FROM objects o JOIN files f ON f.id = o.file_id "
            "WHERE f.state = ?",
            (state,),
        ).fetchall()
    return [r[0] for r in rows]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def remaining(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def check_failed_folder(failed: Path, drop: Drop) -> None:
    day = failed / dt.date.today().isoformat()
    moved = sorted(p.name for p in day.iterdir() if not p.name.endswith("_reason.txt"))
    assert moved == sorted(p.name for p in drop.invalid)
    for p in drop.invalid:
        reason = (day / f"{p.name}_reason.txt").read_text()
        assert f"file: {p}" in reason, reason
        want = "not a valid DICOM file" if p.suffix == ".dcm" else "conversion failed"
        assert f"reason: {want}: " in reason, reason


def stored_uids(server: Server) -> list[str]:
    from sqlalchemy import select

    from pacsbox.archive.index.models import Instance

    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(Instance.__table__.c.sop_instance_uid))]
    finally:
        arch.engine.dispose()


def settings_file(
    tmp_path: Path, port: int, ae: str = "PACSBOX", **monitor: object
) -> tuple[Path, Path, Path, Path]:
    watched, failed, state = tmp_path / "in", tmp_path / "failed", tmp_path / "state"
    watched.mkdir(exist_ok=True)
    cfg = {
        "path": str(watched),
        "failed_dir": str(failed),
        "stable_seconds": 0.5,
        "batch_size": 40,
        "retry_count": 3,
        "retry_interval": 1.0,
        "patient": {"patient_id": "MONITOR1", "patient_name": "Folder^Watch"},
        **monitor,
    }
    data = {
        "devices": [{"name": "dest", "ae_title": ae, "host": "127.0.0.1", "port": port}],
        "monitors": [cfg],
        "service": {"state_dir": str(state), "lock_file": str(tmp_path / "lock")},
    }
    path = tmp_path / "stp.json"
    path.write_text(json.dumps(data))
    return path, watched, failed, state


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def factory(settings: Path, name: str = "svc") -> tuple[subprocess.Popen, int]:
        port = free_port()
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "sendtopacs"),
                "service",
                "--settings",
                str(settings),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).is_success:
                    return proc, port
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the service did not start")

    yield factory
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_200_files_kill_9_and_restart(tmp_path: Path, make_server, start_service) -> None:
    server = make_server(**PERMISSIVE)
    settings, watched, failed, state = settings_file(tmp_path, server.port, method="events")
    proc, _ = start_service(settings, "first")
    drop = drop_files(watched)
    # kill -9 once a good part (but not all) has gone through
    wait_until(lambda: journal_counts(state).get("done", 0) >= 50, 60, "50 files done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    before = journal_counts(state)
    assert before.get("done", 0) < len(drop.valid), "the kill came too late to prove anything"
    drop.join()
    proc2, port2 = start_service(settings, "second")
    total = len(drop.valid) + len(drop.invalid)
    wait_until(
        lambda: (
            journal_counts(state).get("done", 0) + journal_counts(state).get("failed", 0) >= total
            and not remaining(watched)
        ),
        150,
        "every file done or failed",
    )
    counts = journal_counts(state)
    assert counts == {"done": len(drop.valid), "failed": len(drop.invalid)}, counts
    assert remaining(watched) == []  # successes were deleted (remove_sent)
    check_failed_folder(failed, drop)
    # every valid file arrived exactly once: one instance per file, the journal's UIDs
    done_uids = journal_uids(state)
    assert len(done_uids) == len(set(done_uids)) == len(drop.valid)
    assert drop.dicom_uids <= set(done_uids)  # DICOM inputs go with their own UIDs
    stored = stored_uids(server)
    assert sorted(stored) == sorted(done_uids)
    status = httpx.get(f"http://127.0.0.1:{port2}/api/monitor").json()
    assert status["monitors"][0]["counts"]["done"] == len(drop.valid)


def _pacsbox_on(port: int, tmp_path: Path) -> Server:
    data = tmp_path / "late" / "data"
    data.mkdir(parents=True)
    return Server(data, port, server_env(data, port, None, **PERMISSIVE)).start()


def test_retry_until_the_destination_comes_up(tmp_path: Path) -> None:
    port = free_port()
    settings_path, watched, failed, state = settings_file(
        tmp_path, port, retry_count=30, retry_interval=1.0, method="polling", poll_interval=0.3
    )
    from pacsbox.sendtopacs.settings import load

    settings = load(settings_path)
    monitors = MonitorSet(settings, state, tick=0.1)
    monitors.start()
    server = None
    try:
        for i in range(3):
            (watched / f"late{i}.png").write_bytes(png_bytes(i))

        def refused() -> bool:
            rows = monitors.journal.recent()
            return len(rows) == 3 and all("connection refused" in r["reason"] for r in rows)

        wait_until(refused, 20, "a refused attempt for each file")
        rows = monitors.journal.recent()
        assert {r["state"] for r in rows} == {"converted"} and all(r["attempts"] >= 1 for r in rows)
        server = _pacsbox_on(port, tmp_path)
        wait_until(lambda: monitors.journal.counts().get("done") == 3, 30, "3 files sent")
        assert not failed.exists() and remaining(watched) == []
        assert len(stored_uids(server)) == 3
    finally:
        monitors.stop()
        if server is not None:
            server.stop()


def test_retries_exhausted_go_to_the_failed_folder(tmp_path: Path) -> None:
    port = free_port()
    settings_path, watched, failed, state = settings_file(
        tmp_path,
        port,
        retry_count=2,
        retry_interval=0.3,
        remove_sent=False,
        success_dir=str(tmp_path / "ok"),
    )
    from pacsbox.sendtopacs.settings import load

    monitors = MonitorSet(load(settings_path), state, tick=0.1)
    monitors.start()
    try:
        (watched / "nobody.png").write_bytes(png_bytes(1))
        wait_until(lambda: monitors.journal.counts().get("failed") == 1, 20, "the failure")
    finally:
        monitors.stop()
    day = failed / dt.date.today().isoformat()
    assert (day / "nobody.png").read_bytes() == png_bytes(1)
    reason = (day / "nobody.png_reason.txt").read_text()
    assert "sending failed after 2 attempt(s)" in reason and "connection refused" in reason
    assert "attempts: 2" in reason
    assert not (tmp_path / "ok").exists()
    assert not (state / "objects").exists() or not any((state / "objects").iterdir())


def test_success_folder_and_tag_updates(tmp_path: Path, make_server) -> None:
    server = make_server(**PERMISSIVE)
    ok = tmp_path / "ok"
    settings_path, watched, failed, state = settings_file(
        tmp_path,
        server.port,
        remove_sent=False,
        success_dir=str(ok),
        tag_updates=[{"tag": "StudyDescription", "value": "{Modality} - test", "create": True}],
    )
    from pacsbox.sendtopacs.settings import load

    (watched / "a").mkdir()
    ds = make_ct(sop_uid=generate_uid())
    ds.save_as(watched / "a" / "one.dcm", enforce_file_format=True)
    original = (watched / "a" / "one.dcm").read_bytes()
    monitors = MonitorSet(load(settings_path), state, tick=0.1)
    monitors.start()
    try:
        wait_until(lambda: monitors.journal.counts().get("done") == 1, 20, "sent")
    finally:
        monitors.stop()
    assert (ok / "a" / "one.dcm").read_bytes() == original  # moved unchanged
    assert stored_uids(server) == [str(ds.SOPInstanceUID)]
    from sqlalchemy import select

    from pacsbox.archive.index.models import Study

    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            desc = conn.execute(select(Study.__table__.c.study_description)).scalar_one()
    finally:
        arch.engine.dispose()
    assert desc == "CT - test"


def test_duplicate_rejected_counts_as_stored(tmp_path: Path, make_server) -> None:
    """An archive rejecting duplicates answers 0111 to the resend of an instance it has (what
    a resend after a crash looks like): the file is done, not failed."""
    server = make_server(PACSBOX_DUPLICATE_POLICY="reject", **PERMISSIVE)
    settings_path, watched, failed, state = settings_file(tmp_path, server.port)
    from pacsbox.sendtopacs.settings import load

    ds = make_ct()
    monitors = MonitorSet(load(settings_path), state, tick=0.1)
    monitors.start()
    try:
        for i in (1, 2):
            ds.save_as(watched / f"same{i}.dcm", enforce_file_format=True)
            wait_until(lambda i=i: monitors.journal.counts().get("done") == i, 20, f"{i} done")
    finally:
        monitors.stop()
    assert not failed.exists() and stored_uids(server) == [str(ds.SOPInstanceUID)]


def test_add_to_list_mode(tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    settings = Settings(
        devices=[Device("d", "X", "127.0.0.1", 104)],
        monitors=[{"path": str(watched), "mode": "add-to-list", "stable_seconds": 0.2}],
    )
    listed: list[Path] = []
    monitors = MonitorSet(settings, tmp_path / "state", on_list=listed.append, tick=0.1)
    monitors.start()
    try:
        (watched / "x.png").write_bytes(png_bytes(1))
        (watched / ".hidden.png").write_bytes(png_bytes(2))
        (watched / "y.jpg.part").write_bytes(b"partial")
        wait_until(lambda: len(listed) == 1, 10, "the file listed")
    finally:
        monitors.stop()
    assert listed == [watched / "x.png"] and (watched / "x.png").exists()
    # a restart does not list it again; a changed file is listed again
    listed.clear()
    monitors = MonitorSet(settings, tmp_path / "state", on_list=listed.append, tick=0.1)
    monitors.start()
    try:
        time.sleep(1.0)
        assert listed == []
        (watched / "x.png").write_bytes(png_bytes(3))
        wait_until(lambda: len(listed) == 1, 10, "the changed file listed")
    finally:
        monitors.stop()


def test_watched_path_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    settings = Settings(
        devices=[Device("d", "X", "127.0.0.1", 104)],
        monitors=[{"path": str(link), "mode": "add-to-list", "stable_seconds": 0.2,
                   "poll_interval": 3600}],
    )  # fmt: skip
    listed: list[Path] = []
    monitors = MonitorSet(settings, tmp_path / "state", on_list=listed.append, tick=0.1)
    monitors.start()
    try:
        time.sleep(0.5)  # the first scan found nothing; the file arrives by an event
        (real / "x.png").write_bytes(png_bytes(1))
        wait_until(lambda: len(listed) == 1, 10, "the file listed")
    finally:
        monitors.stop()
    assert listed == [link / "x.png"]


def test_journal_forgets_old_finished_files(tmp_path: Path) -> None:
    from pacsbox.sendtopacs.monitor import Journal

    j = Journal(tmp_path / "j.sqlite")
    old = j.add("/f", "/f/a", 1, 1, "x")
    j.set_state(old, "done", updated=time.time() - 40 * 86400)
    j.add("/f", "/f/b", 1, 1, "y")  # unfinished: kept whatever its age
    recent = j.add("/f", "/f/c", 1, 1, "z")
    j.set_state(recent, "failed", "r")
    assert j.prune(30) == 1
    assert sorted(r["path"] for r in j.recent()) == ["/f/b", "/f/c"]
    j.close()


def test_open_for_writing_and_config_checks(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    with open(path, "wb") as fh:
        fh.write(b"x")
        assert open_for_writing([str(path)]) == {str(path)}
    with open(path, "rb"):
        assert open_for_writing([str(path)]) == set()
    with pytest.raises(MonitorError, match="failed_dir"):
        MonitorConfig(str(tmp_path)).validate()
    with pytest.raises(MonitorError, match="success_dir"):
        MonitorConfig(str(tmp_path), failed_dir="/tmp/f", remove_sent=False).validate()
    with pytest.raises(MonitorError, match="absolute"):
        MonitorConfig("relative").validate()
    with pytest.raises(MonitorError, match="unknown key"):
        MonitorConfig.from_json({"path": "/x", "colour": "red"})
    with pytest.raises(MonitorError, match="twice"):
        parse_monitors([{"path": "/x", "mode": "add-to-list"}] * 2)
    with pytest.raises(MonitorError, match="tag update"):
        MonitorConfig(
            "/x", mode="add-to-list", tag_updates=[{"tag": "PixelData", "value": "1"}]
        ).validate()


def test_monitor_cli_add_list_remove(tmp_path: Path) -> None:
    config = tmp_path / "stp.json"

    def stp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "sendtopacs"), "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert (
        stp("devices", "add", "d", "--aec", "X", "--host", "127.0.0.1", "--port", "104").returncode
        == 0
    )
    res = stp("monitor", "add", str(tmp_path / "in"))  # auto-forward needs a failed folder
    assert res.returncode == 2 and "failed_dir" in res.stderr
    res = stp(
        "monitor",
        "add",
        str(tmp_path / "in"),
        "--failed-dir",
        str(tmp_path / "failed"),
        "--method",
        "polling",
        "--poll-interval",
        "5",
        "--patient-id",
        "P1",
        "--patient-name",
        "Doe^Jane",
    )
    assert res.returncode == 0, res.stderr
    listed = json.loads(stp("monitor", "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["method"] == "polling"
    assert listed[0]["patient"] == {"patient_id": "P1", "patient_name": "Doe^Jane"}
    assert stp("monitor", "remove", str(tmp_path / "in")).returncode == 0
    assert json.loads(stp("monitor", "list", "--json").stdout) == []
    res = stp("monitor")  # nothing to run
    assert res.returncode == 2 and "no monitored folders" in res.stderr
