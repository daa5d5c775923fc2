"""Blob storage (SPEC A3, M5): where instance bytes live, written atomically and durably.

A Part-10 file (PS3.10 §7: 128-byte preamble, ``DICM``, File Meta Information group 0002,
then the data set) is written as: temp file in the target directory → ``fsync`` → ``rename`` →
``fsync`` of the directory — all before the caller acknowledges the instance (SPEC R1). The
data set bytes are written exactly as received, never re-encoded.

Directory fsyncs are group-committed per process (:class:`DirSyncGroup`): associations that
renamed into the same directory while an fsync of it was running share the next one, which
starts after all their renames — the same guarantee as one fsync each, with fewer of them.

Paths are derived only from validated UIDs (digits and dots), so nothing a peer sends can
steer a write outside the data directory (SPEC R2).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_SUFFIX = ".tmp"
INSTANCE_SUFFIX = ".dcm"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


class InvalidUID(ValueError):
    """A value that must be a UID (PS3.5 §9.1) is not one."""


def check_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if it is a UID (digits and dots, at most 64 chars), else raise.

    Leading zeros in components (not conformant, but sent by real modalities) are tolerated;
    anything that could form a path component other than a UID is not.
    """
    if not isinstance(value, str):
        raise InvalidUID(f"{what} is missing")
    value = value.rstrip("\x00 ")
    if not value:
        raise InvalidUID(f"{what} is empty")
    if len(value) > 64 or not _UID_RE.match(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidUID(f"{what} {shown!r} is not a valid UID")
    return value


def _pad_even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae: str | None = None,
) -> bytes:
    """Preamble + ``DICM`` + File Meta Information group (PS3.10 §7.1), Explicit VR LE.

    Hand-encoded (no pydicom round trip): this runs once per received instance.
    """

    def element(tag_elem: int, vr: bytes, value: bytes) -> bytes:
        if vr in (b"OB",):
            return struct.pack("<HH2sHI", 0x0002, tag_elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value

    def ui(value: str) -> bytes:
        return _pad_even(value.encode("ascii"), b"\x00")

    body = b"".join(
        (
            element(0x0001, b"OB", b"\x00\x01"),
            element(0x0002, b"UI", ui(sop_class_uid)),
            element(0x0003, b"UI", ui(sop_instance_uid)),
            element(0x0010, b"UI", ui(transfer_syntax_uid)),
            element(0x0012, b"UI", ui(IMPLEMENTATION_CLASS_UID)),
            element(0x0013, b"SH", _pad_even(IMPLEMENTATION_VERSION_NAME.encode(), b" ")),
            element(0x0016, b"AE", _pad_even(source_ae.encode("ascii", "replace"), b" "))
            if source_ae
            else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


@dataclass(frozen=True)
class StoredBlob:
    """Where an instance was written: a path relative to the store root, and its size."""

    key: str
    size: int


class BlobStore(Protocol):
    """Storage backend interface (SPEC M5): filesystem today; mirror and S3 plug in here."""

    def key_for(self, study_uid: str, series_uid: str, sop_uid: str) -> str: ...

    def put(self, key: str, chunks: Sequence[bytes | memoryview]) -> StoredBlob: ...

    def put_file(
        self, key: str, source: Path, header: bytes = b"", offset: int = 0
    ) -> StoredBlob: ...

    def open(self, key: str) -> os.PathLike[str]: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None: ...

    def delete(self, key: str) -> None: ...

    def iter_keys(self) -> Iterator[str]: ...


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSyncGroup:
    """Group commit of directory fsyncs (the classic database log technique).

    :meth:`sync` returns once an ``fsync`` of the directory has *started and finished* after
    the call began, so every rename the caller made before calling is durable. When a sync
    of that directory is already running, callers wait for it to end and then one of them
    runs a single new sync for all of them. A failed fsync raises in the thread that ran it;
    the others retry with their own.
    """

    def __init__(self, fsync_dir: object = None) -> None:
        self._cv = threading.Condition()
        #: directory → [requests, requests covered by a finished sync, sync running]
        self._state: dict[str, list[int]] = {}
        self._fsync_dir = fsync_dir or _fsync_dir
        self.syncs = 0  #: fsyncs run (for tests and stats)

    def sync(self, directory: str) -> None:
        with self._cv:
            st = self._state.get(directory)
            if st is None:
                st = self._state[directory] = [0, 0, 0]
            st[0] += 1
            mine = st[0]
            while st[1] < mine:
                if st[2]:
                    self._cv.wait()
                    continue
                st[2] = 1
                target = st[0]  # this sync starts after every request made so far
                self._cv.release()
                try:
                    self._fsync_dir(directory)  # type: ignore[operator]
                except BaseException:
                    self._cv.acquire()
                    st[2] = 0
                    self._cv.notify_all()
                    raise
                self._cv.acquire()
                self.syncs += 1
                st[1] = max(st[1], target)
                st[2] = 0
                self._cv.notify_all()
            if st[0] == st[1] and not st[2] and len(self._state) > 256:
                self._state.pop(directory, None)  # idle: nobody waits on it


class FilesystemStore:
    """Files under ``root/<study>/<series>/<sop>.dcm`` with two hash-free levels of UIDs.

    Every write goes through a uniquely named temp file in the target directory, so a crash
    leaves either the old complete file, the new complete file, or a ``*.tmp`` that is never
    indexed and is removed by ``pacsbox check --repair``.
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self._root_str = str(self.root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path | str] = set()
        self._lock = threading.Lock()
        self._counter = 0
        self._dir_sync = DirSyncGroup()

    # -- keys -----------------------------------------------------------------------------
    def key_for(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        study = check_uid(study_uid, "Study Instance UID")
        series = check_uid(series_uid, "Series Instance UID")
        sop = check_uid(sop_uid, "SOP Instance UID")
        return f"{study}/{series}/{sop}{INSTANCE_SUFFIX}"

    def path(self, key: str) -> Path:
        """Absolute path of ``key``; raises ValueError if the key would leave the root."""
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
            raise ValueError(f"bad storage key {key!r}")
        path = self.root.joinpath(*parts)
        if self.root not in path.parents:
            raise ValueError(f"bad storage key {key!r}")
        return path

    # -- writes ---------------------------------------------------------------------------
    def _tmp_name(self, final: Path) -> Path:
        with self._lock:
            self._counter += 1
            n = self._counter
        return final.with_name(
            f".{final.name}.{os.getpid()}.{threading.get_ident()}.{n}{TMP_SUFFIX}"
        )

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        new_parents = [p for p in (directory.parent, directory) if not p.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for p in new_parents:  # make the new directory entries themselves durable
                _fsync_dir(p.parent)
        if len(self._known_dirs) > 4096:
            self._known_dirs.clear()
        self._known_dirs.add(directory)
        self._known_dirs.add(str(directory))

    def _commit(self, tmp: Path, final: Path) -> None:
        os.replace(tmp, final)
        if self.fsync:
            self._dir_sync.sync(str(final.parent))

    def _fs_path(self, key: str) -> str:
        """``path(key)`` as a string, without pathlib (the per-instance write path).

        The same rule as ``path``: every component is non-empty and not ``.``/``..``, so
        the result is below the root.
        """
        if key.startswith("/") or "\x00" in key:
            raise ValueError(f"bad storage key {key!r}")
        parts = key.split("/")
        for part in parts:
            if part in ("", ".", ".."):
                raise ValueError(f"bad storage key {key!r}")
        return os.path.join(self._root_str, *parts)

    def put(self, key: str, chunks: Sequence[bytes | memoryview]) -> StoredBlob:
        """Write ``chunks`` (e.g. file meta + data set) durably at ``key``.

        Runs once per received instance: plain ``os`` calls on string paths, one ``writev``
        of the fragments as they arrived (no joining copy), ``fdatasync``, ``rename``,
        ``fsync`` of the directory.
        """
        final = self._fs_path(key)
        directory = os.path.dirname(final)
        if directory not in self._known_dirs:
            self._ensure_dir(Path(directory))
        with self._lock:
            self._counter += 1
            n = self._counter
        tmp = os.path.join(
            directory,
            f".{os.path.basename(final)}.{os.getpid()}.{threading.get_ident()}.{n}{TMP_SUFFIX}",
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o640)
        except FileNotFoundError:
            # The cached directory was removed meanwhile (a study deletion in another
            # process removes emptied folders): create it again, once.
            self._known_dirs.discard(directory)
            self._known_dirs.discard(Path(directory))
            self._ensure_dir(Path(directory))
            fd = os.open(tmp, flags, 0o640)
        try:
            pending = [c for c in chunks if len(c)]
            total = sum(len(c) for c in pending)
            written = 0
            while pending:
                k = os.writev(fd, pending[:1024])  # IOV_MAX
                written += k
                # short write: drop the fully written chunks, slice the partial one
                i = 0
                while i < len(pending) and k >= len(pending[i]):
                    k -= len(pending[i])
                    i += 1
                del pending[:i]
                if pending and k:
                    pending[0] = memoryview(pending[0])[k:]
            if self.fsync:
                os.fdatasync(fd)  # data + size; the rename is made durable by the dir fsync
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, final)
            if self.fsync:
                self._dir_sync.sync(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        assert written == total
        return StoredBlob(key, total)

    def put_file(self, key: str, source: Path, header: bytes = b"", offset: int = 0) -> StoredBlob:
        """Copy ``source`` from byte ``offset`` on, prefixed with ``header``, durably to ``key``."""
        final = self.path(key)
        self._ensure_dir(final.parent)
        tmp = self._tmp_name(final)
        try:
            with open(tmp, "xb") as out, open(source, "rb") as src:
                if header:
                    out.write(header)
                src.seek(offset)
                while True:
                    buf = src.read(1 << 20)
                    if not buf:
                        break
                    out.write(buf)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
                size = out.tell()
            self._commit(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredBlob(key, size)

    # -- reads ----------------------------------------------------------------------------
    def open(self, key: str) -> Path:
        return self.path(key)

    def locate(self, key: str, linked: bool = False) -> Path:
        """Where an indexed instance's bytes are: below the root, or — for files imported in
        place (``pacsbox import --link``, index column ``linked``) — the absolute path the
        index holds."""
        return Path(key) if linked else self.path(key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except OSError:
            return None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def iter_keys(self) -> Iterator[str]:
        """Every complete instance file under the root (temp files excluded)."""
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.endswith(INSTANCE_SUFFIX) and not name.startswith("."):
                    yield name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")

    def iter_temp_files(self) -> Iterator[Path]:
        """Leftover temp files of interrupted writes."""
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(TMP_SUFFIX):
                    yield Path(dirpath) / name


class MirroredStore(FilesystemStore):
    """A filesystem store that writes every file to a backup root too, before success (A3)."""

    def __init__(self, root: Path, backup_root: Path, fsync: bool = True) -> None:
        super().__init__(root, fsync)
        self.backup = FilesystemStore(backup_root, fsync)

    def put(self, key: str, chunks: Sequence[bytes | memoryview]) -> StoredBlob:
        blob = super().put(key, chunks)
        self.backup.put(key, chunks)
        return blob

    def put_file(self, key: str, source: Path, header: bytes = b"", offset: int = 0) -> StoredBlob:
        blob = super().put_file(key, source, header, offset)
        self.backup.put_file(key, source, header, offset)
        return blob

    def delete(self, key: str) -> None:
        super().delete(key)
        self.backup.delete(key)
