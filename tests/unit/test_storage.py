"""archive.storage: UID checks, path safety, atomic durable writes, file meta encoding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsbox import IMPLEMENTATION_CLASS_UID
from pacsbox.archive.storage import (
    FilesystemStore,
    InvalidUID,
    MirroredStore,
    check_uid,
    encode_file_meta,
)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../x",
        "1.2/3",
        "1..2",
        ".1",
        "1.2.",
        "a.b",
        "1" * 65,
        "1.2\\3",
        "/etc/passwd",
        "1.2.3 4",
    ],
)
def test_check_uid_rejects(bad: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(bad)


def test_check_uid_accepts_and_strips_padding() -> None:
    assert check_uid("1.2.840.10008.1.2\x00") == "1.2.840.10008.1.2"
    assert check_uid("1.02.3") == "1.02.3"  # leading zeros tolerated


def test_keys_cannot_escape(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    with pytest.raises(InvalidUID):
        store.key_for("1.2", "../..", "3")
    for key in ("../x.dcm", "/etc/x.dcm", "a/../../x.dcm", "a//b.dcm"):
        with pytest.raises(ValueError):
            store.path(key)


def test_put_is_atomic_and_complete(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    key = store.key_for("1.2", "1.2.3", "1.2.3.4")
    blob = store.put(key, [b"abc", memoryview(b"defg")])
    assert blob.size == 7 and store.path(key).read_bytes() == b"abcdefg"
    assert list(store.iter_keys()) == [key]
    assert list(store.iter_temp_files()) == []
    store.put(key, [b"new"])
    assert store.path(key).read_bytes() == b"new"


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemStore(tmp_path / "s")
    key = store.key_for("1.2", "1.2.3", "1.2.3.5")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fdatasync", boom)
    with pytest.raises(OSError):
        store.put(key, [b"x" * 100])
    assert not store.exists(key)
    assert list(store.iter_temp_files()) == []


def test_put_recreates_a_directory_removed_meanwhile(tmp_path: Path) -> None:
    # a study deletion (possibly in another process) removes emptied folders that this
    # store still has in its cache of known directories
    store = FilesystemStore(tmp_path / "s")
    first = store.key_for("1.2", "1.2.3", "1.2.3.4")
    store.put(first, [b"one"])
    store.delete(first)
    store.path(first).parent.rmdir()
    store.path(first).parent.parent.rmdir()
    second = store.key_for("1.2", "1.2.3", "1.2.3.5")
    store.put(second, [b"two"])
    assert store.path(second).read_bytes() == b"two"


def test_put_refuses_keys_outside_the_root(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    for key in ("../x.dcm", "/etc/x.dcm", "a/../../x.dcm", "a//b.dcm", "a/./b.dcm", "a\x00/b"):
        with pytest.raises(ValueError):
            store.put(key, [b"x"])
    assert not (tmp_path / "x.dcm").exists()


def test_put_handles_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemStore(tmp_path / "s")
    key = store.key_for("1.2", "1.2.3", "1.2.3.6")
    real_writev = os.writev

    def short(fd: int, buffers: list) -> int:  # at most 5 bytes per call
        first = bytes(buffers[0])[:5]
        return real_writev(fd, [first])

    monkeypatch.setattr("os.writev", short)
    chunks = [b"abcdefgh", b"", memoryview(b"ijklmnopqrstuvwxyz"), b"0123"]
    assert store.put(key, chunks).size == 30
    assert store.path(key).read_bytes() == b"abcdefghijklmnopqrstuvwxyz0123"


def test_mirror(tmp_path: Path) -> None:
    store = MirroredStore(tmp_path / "main", tmp_path / "backup")
    key = store.key_for("1.2", "1.3", "1.4")
    store.put(key, [b"data"])
    assert (tmp_path / "backup" / key).read_bytes() == b"data"
    store.delete(key)
    assert not (tmp_path / "backup" / key).exists()


def test_file_meta_is_valid_part10(tmp_path: Path) -> None:
    from tests.helpers import make_ct
    from tests.integration.test_ingest import encode

    ds = make_ct()
    meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "MOD1")
    path = tmp_path / "f.dcm"
    path.write_bytes(meta + encode(ds))
    back = dcmread(path)
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.SourceApplicationEntityTitle == "MOD1"
    assert back.file_meta.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert back.SOPInstanceUID == ds.SOPInstanceUID


# -- group commit of directory fsyncs -----------------------------------------------------
def test_dir_sync_group_covers_every_caller_with_fewer_syncs() -> None:
    import threading
    import time

    from pacsbox.archive.storage import DirSyncGroup

    lock = threading.Lock()
    started: list[float] = []  # start time of each fsync
    finished: list[float] = []

    def slow_fsync(_directory: str) -> None:
        with lock:
            started.append(time.monotonic())
        time.sleep(0.02)
        with lock:
            finished.append(time.monotonic())

    group = DirSyncGroup(slow_fsync)
    calls: list[tuple[float, float]] = []

    def caller() -> None:
        for _ in range(5):
            t0 = time.monotonic()
            group.sync("/d")
            with lock:
                calls.append((t0, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 40
    assert group.syncs == len(started) < 40  # grouped
    spans = list(zip(started, finished, strict=True))
    for t0, t1 in calls:  # some fsync started after the call began and ended before it returned
        assert any(t0 <= s and f <= t1 for s, f in spans), (t0, t1)


def test_dir_sync_group_error_reaches_the_thread_and_others_retry() -> None:
    from pacsbox.archive.storage import DirSyncGroup

    failures = [OSError(5, "I/O error")]

    def flaky(_directory: str) -> None:
        if failures:
            raise failures.pop()

    group = DirSyncGroup(flaky)
    with pytest.raises(OSError):
        group.sync("/d")
    group.sync("/d")  # the next one runs its own fsync
    assert group.syncs == 1
