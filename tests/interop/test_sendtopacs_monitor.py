"""sendtopacs folder monitor (SPEC S6) against DCMTK storescp: 200 files dropped into a polled
folder (some written slowly while kept open, some invalid) with ``sendtopacs monitor`` killed
by SIGKILL midway and restarted. Every valid file arrives; what storescp received is counted
from its verbose log (C-STORE requests) and its output folder (distinct SOP Instances)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.helpers import VENV_BIN, dcmtk_env, free_port
from tests.integration.test_sendtopacs_monitor import (
    check_failed_folder,
    drop_files,
    journal_counts,
    journal_uids,
    remaining,
    settings_file,
    wait_until,
)

pytestmark = pytest.mark.interop

STORESCP = Path("/usr/bin/storescp")


def _listening(port: int) -> bool:
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
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    if not STORESCP.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("storescp is required in CI")
        pytest.skip("storescp not installed")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    log = tmp_path / "storescp.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(STORESCP), "-v", "-aet", "STORESCP", "-od", str(out), str(port)],
            env=dcmtk_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(lambda: _listening(port), 10, "storescp listening")
    yield port, out, log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _monitor(settings: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [str(VENV_BIN / "sendtopacs"), "monitor", "--settings", str(settings)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_200_files_to_storescp_with_kill_9(tmp_path: Path, storescp) -> None:
    port, received, scp_log = storescp
    settings, watched, failed, state = settings_file(
        tmp_path, port, ae="STORESCP", method="polling", poll_interval=0.5, batch_size=25
    )
    mon_log = tmp_path / "monitor.log"
    proc = _monitor(settings, mon_log)
    drop = drop_files(watched)
    wait_until(lambda: journal_counts(state).get("done", 0) >= 40, 60, "40 files done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert journal_counts(state).get("done", 0) < len(drop.valid)
    drop.join()
    proc = _monitor(settings, mon_log)
    try:
        total = len(drop.valid) + len(drop.invalid)
        wait_until(
            lambda: (
                sum(journal_counts(state).get(s, 0) for s in ("done", "failed")) >= total
                and not remaining(watched)
            ),
            150,
            "every file done or failed",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, mon_log.read_text()[-2000:]
    assert journal_counts(state) == {"done": len(drop.valid), "failed": len(drop.invalid)}
    check_failed_folder(failed, drop)
    # what storescp got: each valid file's object, intact, under the UID the journal recorded
    got = {}
    for path in received.iterdir():
        ds = dcmread(path)
        got[str(ds.SOPInstanceUID)] = ds
    done = journal_uids(state)
    assert sorted(got) == sorted(done) and len(done) == len(drop.valid)
    converted = [ds for uid, ds in got.items() if uid not in drop.dicom_uids]
    assert {ds.PatientID for ds in converted} == {"MONITOR1"}
    slow_sizes = {ds.Rows for ds in converted if ds.Rows == 64}
    assert slow_sizes == {64}  # the slowly written 64×64 PNGs arrived whole
    assert sum(1 for ds in converted if ds.Rows == 64) == len(drop.slow)
    # C-STORE requests: at most the one in flight at the kill went twice (same UID)
    requests = scp_log.read_text(errors="replace").count("Received Store Request")
    assert len(drop.valid) <= requests <= len(drop.valid) + 1, requests
