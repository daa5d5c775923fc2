"""Folder monitor (SPEC S6): watched folders whose new files are either added to the service's
file list or auto-forwarded (converted when they are not DICOM, then C-STORE'd, PS3.4 Annex B)
to a destination device.

Per folder (the ``monitors`` list of the settings, :class:`MonitorConfig`): native file-system
events (watchdog) or polling every N seconds with a batch size; recursive or not; a file is
taken only once it is completely written — its size and modification time unchanged for
``stable_seconds`` *and* no process has it open for writing (``/proc/*/fd`` on Linux) *and* no
one holds an ``flock`` on it. Auto-forward: retry count and retry interval for sending;
successes deleted or moved to a success folder; failures moved to
``<failed>/YYYY-MM-DD/<name>`` with ``<name>_reason.txt`` (the conversion error, the C-STORE
status, the association failure … and the number of attempts); tag update patterns for
DICOM inputs (:mod:`pacsbox.sendtopacs.tagupdate`); patient/study data for other files from
the folder's defaults or from the file name (:mod:`pacsbox.sendtopacs.naming` + a worklist).

Restart safety — the journal (:class:`Journal`, SQLite in the service's state folder, WAL,
``synchronous=FULL``) records each file: ``seen`` (path, size, mtime, SHA-256) → ``converted``
(each object written to ``<state>/objects/<file id>/`` and its SOP Instance UID recorded, in
one transaction) → each object marked sent right after its C-STORE response → ``sent`` →
success action → ``done``; failures go ``failing`` (reason recorded) → moved → ``failed``.
After a kill -9 at any moment the monitor resumes every unfinished row from the journal:

* no file is lost — a source file leaves the watched folder only after its row says ``sent``
  (or ``failing`` with the reason recorded), and every row is resumed;
* no object is stored twice under two identities — a resend after a crash sends the *same*
  saved object (same SOP Instance UID); conversion is repeated only when nothing of it was
  committed, and then nothing of it had been sent;
* at most the one object whose C-STORE was in flight when the process died (its response not
  yet committed) is sent again, identical — an archive keeps one instance per SOP Instance UID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from pacsbox.sendtopacs.convert import Converter, ConvertError
from pacsbox.sendtopacs.patient import PatientInfo, PatientInfoError
from pacsbox.sendtopacs.send import ItemResult, SendItem, send_items
from pacsbox.sendtopacs.settings import Settings, SettingsError

log = logging.getLogger("pacsbox.sendtopacs.monitor")

MODES = ("auto-forward", "add-to-list")
METHODS = ("events", "polling")
#: names a writer uses while a file is incomplete (browsers, rsync, office, our own temp files)
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", "~")
ACTIVE_STATES = ("seen", "converted", "sent", "failing")


class MonitorError(ValueError):
    """A monitored-folder configuration is not valid."""


@dataclass
class MonitorConfig:
    """One watched folder (the "Monitor" settings tab)."""

    path: str
    recursive: bool = True
    mode: str = "auto-forward"  #: auto-forward | add-to-list
    method: str = "events"  #: events (watchdog) | polling
    poll_interval: float = 60.0  #: seconds between scans (polling; events: safety rescan)
    batch_size: int = 100  #: files taken per scan / per processing batch
    stable_seconds: float = 2.0  #: size + mtime unchanged this long before a file is taken
    device: str = ""  #: destination device name ("" = the default device)
    retry_count: int = 3  #: sending attempts in all (≥ 1)
    retry_interval: float = 60.0  #: seconds between attempts
    failed_dir: str = ""  #: required for auto-forward
    remove_sent: bool = True  #: delete successes; False → move them to success_dir
    success_dir: str = ""
    tag_updates: list[dict[str, Any]] = field(default_factory=list)
    patient: dict[str, str] = field(default_factory=dict)  #: PatientInfo fields (non-DICOM)
    filename_pattern: str = ""  #: parse file names into worklist search parameters
    worklist_device: str = ""  #: where the parsed parameters are searched
    convert_non_dicom: bool = True  #: False → non-DICOM files fail ("DICOM only")
    enabled: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MonitorConfig:
        if not isinstance(data, dict):
            raise MonitorError("a monitored folder must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MonitorError(f"monitored folder: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise MonitorError(f"monitored folder: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, settings: Settings | None = None) -> MonitorConfig:
        where = f"monitored folder {self.path!r}"
        if not self.path or not Path(self.path).is_absolute():
            raise MonitorError(f"{where}: the path must be absolute")
        if self.mode not in MODES:
            raise MonitorError(f"{where}: mode must be one of {', '.join(MODES)}")
        if self.method not in METHODS:
            raise MonitorError(f"{where}: method must be one of {', '.join(METHODS)}")
        for name, low in (("poll_interval", 0.1), ("retry_interval", 0.0)):
            value = float(getattr(self, name))
            if not low <= value <= 86400:
                raise MonitorError(f"{where}: {name} must be in [{low}, 86400] seconds")
            setattr(self, name, value)
        self.stable_seconds = float(self.stable_seconds)
        if not 0 <= self.stable_seconds <= 3600:
            raise MonitorError(f"{where}: stable_seconds must be in [0, 3600]")
        if not 1 <= int(self.batch_size) <= 100000:
            raise MonitorError(f"{where}: batch_size must be in 1..100000")
        if not 1 <= int(self.retry_count) <= 1000:
            raise MonitorError(f"{where}: retry_count (attempts in all) must be in 1..1000")
        self.batch_size, self.retry_count = int(self.batch_size), int(self.retry_count)
        if self.mode == "auto-forward":
            if not self.failed_dir or not Path(self.failed_dir).is_absolute():
                raise MonitorError(f"{where}: auto-forward needs an absolute failed_dir")
            if not self.remove_sent and (
                not self.success_dir or not Path(self.success_dir).is_absolute()
            ):
                raise MonitorError(
                    f"{where}: remove_sent is off, so an absolute success_dir is required"
                )
            watched = Path(self.path).resolve()
            for other in (self.failed_dir, self.success_dir):
                if other and Path(other).resolve() == watched:
                    raise MonitorError(f"{where}: failed/success folder is the watched folder")
            if settings is not None and (settings.devices or self.device):
                try:
                    settings.device(self.device or None)
                except SettingsError as exc:
                    raise MonitorError(f"{where}: {exc}") from exc
        if self.patient:
            try:
                _patient_from(self.patient).validate(require=False)
            except (PatientInfoError, MonitorError) as exc:
                raise MonitorError(f"{where}: patient defaults: {exc}") from exc
        if self.tag_updates:
            _tag_updater(self.tag_updates)  # raises on a bad pattern
        return self


def _patient_from(data: dict[str, str]) -> PatientInfo:
    known = {f.name for f in fields(PatientInfo)} - {"extra"}
    values = {k: str(v) for k, v in data.items() if k in known}
    info = PatientInfo(**values)
    if data.get("patient_name"):
        info.set_name(str(data["patient_name"]))
    unknown = set(data) - known - {"patient_name"}
    if unknown:
        raise MonitorError(f"unknown patient field(s) {', '.join(sorted(unknown))}")
    return info


def parse_monitors(raw: Iterable[dict[str, Any]], settings: Settings | None = None) -> list:
    """The ``monitors`` settings list → validated :class:`MonitorConfig` objects."""
    out = [MonitorConfig.from_json(item).validate(settings) for item in raw]
    paths = [str(Path(m.path).resolve()) for m in out]
    if len(set(paths)) != len(paths):
        raise MonitorError("the same folder is monitored twice")
    return out


def _tag_updater(patterns: list[dict[str, Any]]) -> Callable[[Any], None]:
    """A function applying the folder's tag update patterns to a data set (SPEC S3)."""
    from pacsbox.sendtopacs import tagupdate

    try:
        parsed = tagupdate.parse_updates(patterns)
    except (ValueError, TypeError) as exc:
        raise MonitorError(f"tag update patterns: {exc}") from exc

    def apply(ds: Any) -> None:
        tagupdate.apply_updates(ds, parsed)

    return apply


def worklist_devices(settings: Settings) -> list[Any]:
    """The worklist devices of the settings (SPEC S2)."""
    from pacsbox.sendtopacs.worklist import WorklistDevice

    raw = getattr(settings, "worklist_devices", None)
    if raw is None:
        raw = settings.extra.get("worklist_devices", [])
    return [d if isinstance(d, WorklistDevice) else WorklistDevice.from_dict(d) for d in raw]


# -- journal -----------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    folder TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    latency REAL
);
CREATE INDEX IF NOT EXISTS files_path ON files (folder, path, state);
CREATE INDEX IF NOT EXISTS files_state ON files (state);
CREATE TABLE IF NOT EXISTS objects (
    file_id INTEGER NOT NULL REFERENCES files (id),
    n INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    object_path TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (file_id, n)
);
CREATE TABLE IF NOT EXISTS studies (
    folder TEXT NOT NULL,
    key TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (folder, key)
);
"""


@dataclass
class FileRow:
    id: int
    folder: str
    path: str
    size: int
    mtime_ns: int
    sha256: str
    state: str
    attempts: int
    next_try: float
    reason: str


class Journal:
    """The monitor's durable record of every file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def tx(self) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple = ()) -> list[FileRow]:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, folder, path, size, mtime_ns, sha256, state, attempts, next_try, "
                f"reason FROM files {sql}",
                args,
            )
            return [FileRow(*r) for r in cur.fetchall()]

    def active(self, folder: str) -> list[FileRow]:
        marks = ",".join("?" * len(ACTIVE_STATES))
        return self._rows(
            f"WHERE folder = ? AND state IN ({marks}) ORDER BY id", (folder, *ACTIVE_STATES)
        )

    def active_paths(self, folder: str) -> set[str]:
        return {r.path for r in self.active(folder)}

    def listed(self, folder: str, path: str) -> tuple[int, int] | None:
        rows = self._rows(
            "WHERE folder = ? AND path = ? AND state = 'listed' ORDER BY id DESC LIMIT 1",
            (folder, path),
        )
        return (rows[0].size, rows[0].mtime_ns) if rows else None

    def add(
        self, folder: str, path: str, size: int, mtime_ns: int, sha: str, state: str = "seen"
    ) -> int:
        now = time.time()
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO files (folder, path, size, mtime_ns, sha256, state, created, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (folder, path, size, mtime_ns, sha, state, now, now),
            )
            return int(cur.lastrowid or 0)

    def set_state(self, file_id: int, state: str, reason: str | None = None, **extra: Any) -> None:
        sets = ["state = ?", "updated = ?"]
        args: list[Any] = [state, extra.pop("updated", None) or time.time()]
        if reason is not None:
            sets.append("reason = ?")
            args.append(reason)
        for key, value in extra.items():
            sets.append(f"{key} = ?")
            args.append(value)
        with self.tx() as db:
            db.execute(f"UPDATE files SET {', '.join(sets)} WHERE id = ?", (*args, file_id))

    def record_objects(self, file_id: int, objects: list[tuple[str, str]]) -> None:
        """Objects (SOP Instance UID, path) of a file and state ``converted``, atomically."""
        with self.tx() as db:
            db.execute("DELETE FROM objects WHERE file_id = ?", (file_id,))
            db.executemany(
                "INSERT INTO objects (file_id, n, sop_instance_uid, object_path) "
                "VALUES (?, ?, ?, ?)",
                [(file_id, n, uid, p) for n, (uid, p) in enumerate(objects)],
            )
            db.execute(
                "UPDATE files SET state = 'converted', updated = ? WHERE id = ?",
                (time.time(), file_id),
            )

    def objects(self, file_id: int, unsent_only: bool = False) -> list[tuple[int, str, str]]:
        with self._lock:
            sql = "SELECT n, sop_instance_uid, object_path FROM objects WHERE file_id = ?"
            if unsent_only:
                sql += " AND sent = 0"
            return list(self._db.execute(sql + " ORDER BY n", (file_id,)).fetchall())

    def mark_sent(self, file_id: int, n: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE objects SET sent = 1 WHERE file_id = ? AND n = ?", (file_id, n))

    def study_uid(self, folder: str, key: str) -> str:
        from pydicom.uid import generate_uid

        with self.tx() as db:
            row = db.execute(
                "SELECT study_uid FROM studies WHERE folder = ? AND key = ?", (folder, key)
            ).fetchone()
            if row:
                return str(row[0])
            uid = generate_uid()
            db.execute("INSERT INTO studies VALUES (?, ?, ?)", (folder, key, uid))
            return uid

    def counts(self, folder: str | None = None) -> dict[str, int]:
        with self._lock:
            if folder is None:
                cur = self._db.execute("SELECT state, count(*) FROM files GROUP BY state")
            else:
                cur = self._db.execute(
                    "SELECT state, count(*) FROM files WHERE folder = ? GROUP BY state", (folder,)
                )
            return {str(s): int(c) for s, c in cur.fetchall()}

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, folder, path, state, attempts, reason, updated, latency FROM files "
                "ORDER BY updated DESC LIMIT ?",
                (limit,),
            )
            keys = ("id", "folder", "path", "state", "attempts", "reason", "updated", "latency")
            return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]

    def prune(self, keep_days: float = 30.0) -> int:
        """Forget finished files (done, failed, gone) older than ``keep_days``."""
        cutoff = time.time() - keep_days * 86400
        with self.tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM files WHERE state IN ('done', 'failed', 'gone') "
                    "AND updated < ?",
                    (cutoff,),
                )
            ]
            db.executemany("DELETE FROM objects WHERE file_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    def latencies(self) -> list[float]:
        with self._lock:
            cur = self._db.execute("SELECT latency FROM files WHERE latency IS NOT NULL")
            return [float(r[0]) for r in cur.fetchall()]


# -- file helpers ------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_for_writing(paths: Iterable[str]) -> set[str]:
    """The paths among ``paths`` that some process (one we may inspect) has open for writing,
    from ``/proc/<pid>/fd`` and the access mode in ``/proc/<pid>/fdinfo`` (Linux)."""
    wanted = set(paths)
    found: set[str] = set()
    if not wanted or not os.path.isdir("/proc/self/fd"):
        return found
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target not in wanted:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    for line in info:
                        if line.startswith("flags:"):
                            if int(line.split()[1], 8) & 0o3:  # O_WRONLY | O_RDWR
                                found.add(target)
                            break
            except (OSError, ValueError):
                continue
    return found


def _locked(path: Path) -> bool:
    """Another process holds an flock on the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _unique(target: Path) -> Path:
    """``target``, or ``name-1.ext``, ``name-2.ext`` … when it exists."""
    if not target.exists():
        return target
    for i in range(1, 100000):
        candidate = target.with_name(f"{target.stem}-{i}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise OSError(f"no free name for {target}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst = _unique(dst)
    shutil.move(str(src), str(dst))
    _fsync_dir(dst.parent)
    return dst


# -- the monitor -------------------------------------------------------------------------------
@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    since: float  #: monotonic time this (size, mtime) was first seen


@dataclass
class MonitorStatus:
    folder: str
    mode: str
    method: str
    running: bool = False
    last_scan: float = 0.0
    pending: int = 0
    last_error: str = ""
    counts: dict[str, int] = field(default_factory=dict)


class FolderMonitor:
    """Watches one folder and processes its files (see the module docstring)."""

    def __init__(
        self,
        config: MonitorConfig,
        settings: Settings,
        journal: Journal,
        state_dir: Path,
        on_list: Callable[[Path], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        tick: float = 0.25,
    ) -> None:
        self.config = config
        self.settings = settings
        self.journal = journal
        # absolute but not resolved: event paths are under the path as configured
        self.folder = os.path.abspath(config.path)
        self.objects_dir = state_dir / "objects"
        self.on_list = on_list
        self.on_event = on_event
        self.tick = tick
        self.status = MonitorStatus(self.folder, config.mode, config.method)
        self._candidates: dict[str, _Candidate] = {}
        self._hinted: set[str] = set()
        self._busy: set[str] = set()  #: paths with an unfinished journal row
        self._hint_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._excluded = [os.path.abspath(p) for p in (config.failed_dir, config.success_dir) if p]
        self._update = _tag_updater(config.tag_updates) if config.tag_updates else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        if self.config.method == "events":
            self._start_observer()
        self._thread = threading.Thread(
            target=self._run, name=f"monitor:{self.folder}", daemon=True
        )
        self.status.running = True
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        if self._thread is not None:
            self._thread.join(timeout)
        self.status.running = False

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        monitor = self
        # inotify does not follow a symlinked root: watch the real folder and map the event
        # paths back under the configured one
        real = os.path.realpath(self.folder)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.is_directory and event.event_type != "moved":
                    return
                for attr in ("dest_path", "src_path"):
                    value = os.fsdecode(getattr(event, attr, "") or "")
                    if value:
                        if real != monitor.folder and value.startswith(real + os.sep):
                            value = monitor.folder + value[len(real) :]
                        monitor.hint(value)

        self._observer = Observer()
        self._observer.schedule(Handler(), real, recursive=self.config.recursive)
        self._observer.start()

    def hint(self, path: str) -> None:
        """A file-system event named ``path`` (a file or, after a move, a folder)."""
        with self._hint_lock:
            self._hinted.add(path)
        self._wake.set()

    # -- main loop -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._resume()
        except Exception as exc:  # keep the thread alive; the error is in the status
            self._error("resume", exc)
        next_scan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_scan:
                    self._scan()
                    next_scan = now + self.config.poll_interval
                self._take_hints()
                ready = self._ready()
                if ready:
                    self._process_new(ready)
                self._retry_due()
            except Exception as exc:
                self._error("loop", exc)
            self.status.pending = len(self._candidates)
            self._wake.wait(self.tick if self._candidates else min(1.0, self.config.poll_interval))
            self._wake.clear()

    def _error(self, where: str, exc: BaseException) -> None:
        self.status.last_error = f"{where}: {type(exc).__name__}: {exc}"
        log.exception("monitor %s: %s", self.folder, where)
        self._emit("error", {"message": self.status.last_error})

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event:
            try:
                self.on_event(kind, {"folder": self.folder, **data})
            except Exception:  # pragma: no cover - a listener must not stop the monitor
                log.exception("monitor event listener")

    # -- discovery -------------------------------------------------------------------------
    def _skip(self, path: str) -> bool:
        name = os.path.basename(path)
        if name.startswith((".", "~$")) or name.endswith(_PARTIAL_SUFFIXES):
            return True
        if any(path == ex or path.startswith(ex + os.sep) for ex in self._excluded):
            return True
        rel = os.path.relpath(path, self.folder)
        if rel.startswith(".."):
            return True
        if not self.config.recursive and os.sep in rel:
            return True
        return any(part.startswith(".") for part in rel.split(os.sep)[:-1])

    def _walk(self, top: str) -> Iterable[str]:
        if not self.config.recursive:
            with contextlib.suppress(OSError), os.scandir(top) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        yield entry.path
            return
        for dirpath, dirs, names in os.walk(top):
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".") and not self._skip(os.path.join(dirpath, d, "x"))
            )
            for name in sorted(names):
                yield os.path.join(dirpath, name)

    def _consider(self, path: str, limit: int | None = None) -> bool:
        if path in self._candidates or self._skip(path):
            return False
        if limit is not None and len(self._candidates) >= limit:
            return False
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        if st.st_mode & 0o170000 != 0o100000:  # regular files only
            return False
        if path in self._busy:
            return False
        if self.config.mode == "add-to-list" and self.journal.listed(self.folder, path) == (
            st.st_size,
            st.st_mtime_ns,
        ):
            return False
        self._candidates[path] = _Candidate(st.st_size, st.st_mtime_ns, time.monotonic())
        return True

    def _scan(self) -> None:
        self._busy = self.journal.active_paths(self.folder)
        limit = self.config.batch_size if self.config.method == "polling" else None
        for path in self._walk(self.folder):
            self._consider(path, limit)
        self.status.last_scan = time.time()

    def _take_hints(self) -> None:
        with self._hint_lock:
            hinted, self._hinted = self._hinted, set()
        if not hinted:
            return
        self._busy = self.journal.active_paths(self.folder)
        for path in hinted:
            if os.path.isdir(path):
                for sub in self._walk(path):
                    self._consider(sub)
            else:
                self._consider(path)

    def _ready(self) -> list[tuple[str, int, int]]:
        """Candidates completely written: stable size/mtime, not open for writing, no lock."""
        now = time.monotonic()
        stable: list[tuple[str, int, int]] = []
        for path, cand in list(self._candidates.items()):
            try:
                st = os.stat(path)
            except OSError:
                del self._candidates[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns):
                self._candidates[path] = _Candidate(st.st_size, st.st_mtime_ns, now)
                continue
            if now - cand.since >= self.config.stable_seconds:
                stable.append((path, st.st_size, st.st_mtime_ns))
        if not stable:
            return []
        writing = open_for_writing(p for p, _, _ in stable)
        ready = []
        for path, size, mtime in stable:
            if path in writing or _locked(Path(path)):
                self._candidates[path].since = now  # look again after another interval
                continue
            ready.append((path, size, mtime))
            if len(ready) >= self.config.batch_size:
                break
        for path, _, _ in ready:
            del self._candidates[path]
        return ready

    # -- processing ------------------------------------------------------------------------
    def _process_new(self, ready: list[tuple[str, int, int]]) -> None:
        rows: list[FileRow] = []
        for path, size, mtime in ready:
            try:
                sha = _sha256(Path(path))
            except OSError as exc:
                log.warning("monitor %s: cannot read %s: %s", self.folder, path, exc)
                continue
            if self.config.mode == "add-to-list":
                self.journal.add(self.folder, path, size, mtime, sha, state="listed")
                self._emit("listed", {"path": path})
                if self.on_list:
                    self.on_list(Path(path))
                continue
            file_id = self.journal.add(self.folder, path, size, mtime, sha)
            rows.append(FileRow(file_id, self.folder, path, size, mtime, sha, "seen", 0, 0, ""))
            self._emit("seen", {"id": file_id, "path": path})
        if rows:
            self._forward(rows)

    def _resume(self) -> None:
        """Finish what a previous run left: every active row of the journal."""
        rows = self.journal.active(self.folder)
        if not rows:
            return
        log.info("monitor %s: resuming %d file(s) from the journal", self.folder, len(rows))
        todo: list[FileRow] = []
        for row in rows:
            exists = os.path.exists(row.path)
            if row.state == "failing":
                self._finish_failure(row, row.reason)
            elif row.state == "sent":
                self._finish_success(row)
            elif row.state == "seen" and not exists:
                self.journal.set_state(row.id, "gone", "the file disappeared before conversion")
            else:
                todo.append(row)
        # rows waiting for a retry keep their schedule; the others go now
        now = time.time()
        self._forward([r for r in todo if r.next_try <= now])

    def _retry_due(self) -> None:
        now = time.time()
        due = [r for r in self.journal.active(self.folder) if r.state in ("seen", "converted")]
        due = [r for r in due if r.next_try and r.next_try <= now]
        if due:
            self._forward(due[: self.config.batch_size])

    def _forward(self, rows: list[FileRow]) -> None:
        """Convert (rows in ``seen``), send (``converted``), then finish each file."""
        if not rows:
            return
        if not self.settings.devices:
            for row in rows:
                self._fail(row, "no destination device is configured")
            return
        try:
            device = self.settings.device(self.config.device or None)
        except SettingsError as exc:
            for row in rows:
                self._fail(row, str(exc))
            return
        for row in rows:
            if row.state == "seen":
                self._prepare(row, device)
        sendable = [r for r in rows if r.state == "converted"]
        items: list[SendItem] = []
        owner: dict[str, tuple[FileRow, int]] = {}
        bad: dict[int, str] = {}
        for row in sendable:
            for n, uid, object_path in self.journal.objects(row.id, unsent_only=True):
                label = f"{row.id}:{n}"
                try:
                    items.append(SendItem.from_file(Path(object_path)))
                    items[-1].label = label
                    owner[label] = (row, n)
                except (OSError, ValueError, InvalidDicomError) as exc:
                    bad[row.id] = f"cannot read {object_path} ({uid}): {exc}"
        errors: dict[int, str] = dict(bad)

        def progress(res: ItemResult) -> None:
            row, n = owner[res.label]
            # 0111 duplicate SOP instance (PS3.4 §B.2.3, an archive with a "reject duplicates"
            # policy): the instance is there already — the resend after a crash of one whose
            # response was not recorded. It counts as stored.
            if res.ok or res.status == 0x0111:
                self.journal.mark_sent(row.id, n)
            else:
                errors.setdefault(row.id, res.message)

        if items:
            send_items(items, device, self.settings.ae_title, progress=progress)
        for row in sendable:
            if row.id in errors or self.journal.objects(row.id, unsent_only=True):
                self._attempt_failed(row, errors.get(row.id, "not every object was stored"))
            else:
                self.journal.set_state(row.id, "sent", "")
                row.state = "sent"
                self._finish_success(row)

    def _prepare(self, row: FileRow, device: Any) -> None:
        """Convert or read one file; record its objects (state ``converted``)."""
        path = Path(row.path)
        dicom = False
        try:
            if not path.exists():
                self.journal.set_state(row.id, "gone", "the file disappeared before conversion")
                row.state = "gone"
                return
            target = self.objects_dir / str(row.id)
            dicom = _is_dicom_file(path) or self._parses_as_dicom(path)
            if dicom:
                if self._update is None:
                    ds = dcmread(path, stop_before_pixels=True)
                    uid = str(ds.get("SOPInstanceUID", ""))
                    if not uid or "SOPClassUID" not in ds:
                        raise ValueError("DICOM file without SOP Class / Instance UID")
                    objects = [(uid, str(path))]
                else:
                    ds = dcmread(path)
                    self._update(ds)
                    target.mkdir(parents=True, exist_ok=True)
                    out = target / "0.dcm"
                    ds.save_as(out, enforce_file_format=True)
                    _fsync(out)
                    objects = [(str(ds.SOPInstanceUID), str(out))]
            else:
                if not self.config.convert_non_dicom:
                    raise ValueError("not a DICOM file (this folder forwards DICOM files only)")
                patient = self._patient_for(path)
                conv = Converter(patient, self.settings.convert_options(device))
                target.mkdir(parents=True, exist_ok=True)
                objects = []
                for n, item in enumerate(conv.convert(path)):
                    out = target / f"{n}.dcm"
                    item.dataset.save_as(out, enforce_file_format=True)
                    _fsync(out)
                    objects.append((item.sop_instance_uid, str(out)))
                _fsync_dir(target)
            self.journal.record_objects(row.id, objects)
            row.state = "converted"
        except (ConvertError, PatientInfoError, MonitorError, InvalidDicomError) as exc:
            what = "not a valid DICOM file" if dicom else "conversion failed"
            self._fail(row, f"{what}: {exc}")
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            what = "not a valid DICOM file" if dicom else "conversion failed"
            self._fail(row, f"{what}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _parses_as_dicom(path: Path) -> bool:
        """A DICOM file without preamble (``.dcm`` only: never guess on photos)."""
        if path.suffix.lower() not in (".dcm", ".dicom"):
            return False
        try:
            dcmread(path, stop_before_pixels=True, force=False)
            return True
        except Exception:
            return False

    def _patient_for(self, path: Path) -> PatientInfo:
        """The folder's patient defaults, completed from the file name when a pattern is set
        (a unique worklist match maps automatically; none or several fail the file)."""
        patient = _patient_from(self.config.patient) if self.config.patient else PatientInfo()
        if self.config.filename_pattern:
            patient = self._patient_from_name(path, patient)
        if not patient.study_instance_uid and patient.patient_id:
            day = patient.study_date or dt.date.today().strftime("%Y%m%d")
            key = f"{patient.patient_id}|{patient.accession_number}|{day}"
            patient.study_instance_uid = self.journal.study_uid(self.folder, key)
        try:
            return patient.validate()
        except PatientInfoError as exc:
            raise MonitorError(
                f"no usable patient data for {path.name} ({exc}); set the folder's patient "
                "defaults or a file-name pattern"
            ) from exc

    def _patient_from_name(self, path: Path, base: PatientInfo) -> PatientInfo:
        """File name → fields (:mod:`naming`); with a worklist device the fields are searched
        and exactly one match maps (none or several fail the file, SPEC S2); without one the
        parsed fields fill the patient data directly."""
        from pacsbox.sendtopacs import naming

        if self.config.worklist_device:
            devices = worklist_devices(self.settings)
            name = self.config.worklist_device.lower()
            device = next((d for d in devices if d.name.lower() == name), None)
            if device is None:
                raise MonitorError(f"unknown worklist device {self.config.worklist_device!r}")
            mapping = naming.auto_map(
                [path], device, self.config.filename_pattern, calling=self.settings.ae_title
            )[0]
            if mapping.status != "mapped" or mapping.entry is None:
                found = len(mapping.candidates)
                raise MonitorError(
                    f"{path.name}: {mapping.message or f'{found} worklist match(es)'} "
                    "(exactly one is needed to map automatically)"
                )
            patient = mapping.entry.patient
            if not patient.study_instance_uid and base.study_instance_uid:
                patient.study_instance_uid = base.study_instance_uid
            return patient
        fields_ = naming.FilenamePattern(self.config.filename_pattern).match(path.name)
        if fields_ is None:
            raise MonitorError(
                f"{path.name} does not match the file-name pattern {self.config.filename_pattern!r}"
            )
        for key, attr in (
            ("PatientID", "patient_id"),
            ("BirthDate", "birth_date"),
            ("AccessionNumber", "accession_number"),
            ("StudyDate", "study_date"),
            ("StudyInstanceUID", "study_instance_uid"),
        ):
            if fields_.get(key):
                setattr(base, attr, fields_[key])
        if fields_.get("PatientName"):
            base.set_name(fields_["PatientName"])
        if fields_.get("LastName"):
            base.last_name = fields_["LastName"]
        if fields_.get("FirstName"):
            base.first_name = fields_["FirstName"]
        return base

    # -- outcomes --------------------------------------------------------------------------
    def _attempt_failed(self, row: FileRow, reason: str) -> None:
        attempts = row.attempts + 1
        if attempts >= self.config.retry_count:
            row.attempts = attempts
            self._fail(row, f"sending failed after {attempts} attempt(s): {reason}")
            return
        next_try = time.time() + self.config.retry_interval
        self.journal.set_state(row.id, row.state, reason, attempts=attempts, next_try=next_try)
        row.attempts, row.next_try = attempts, next_try
        self._emit("retry", {"id": row.id, "path": row.path, "reason": reason})
        log.info("monitor %s: %s: attempt %d failed: %s", self.folder, row.path, attempts, reason)

    def _fail(self, row: FileRow, reason: str) -> None:
        self.journal.set_state(row.id, "failing", reason, attempts=row.attempts)
        row.state = "failing"
        self._finish_failure(row, reason)

    def _finish_failure(self, row: FileRow, reason: str) -> None:
        src = Path(row.path)
        day = dt.date.today().isoformat()
        failed_root = Path(self.config.failed_dir or Path(self.folder).parent / "failed")
        moved = ""
        if src.exists():
            try:
                dst = _move(src, failed_root / day / src.name)
                note = dst.with_name(f"{dst.name}_reason.txt")
                tmp = note.with_name(f".{note.name}.tmp")
                tmp.write_text(
                    f"file: {row.path}\nfailed: {dt.datetime.now().astimezone().isoformat()}\n"
                    f"attempts: {row.attempts}\nreason: {reason}\n",
                    encoding="utf-8",
                )
                os.replace(tmp, note)
                _fsync_dir(note.parent)
                moved = str(dst)
            except OSError as exc:
                reason += f" (and it could not be moved to the failed folder: {exc})"
        self._drop_objects(row.id)
        self.journal.set_state(row.id, "failed", reason)
        row.state = "failed"
        self._emit("failed", {"id": row.id, "path": row.path, "reason": reason, "moved": moved})
        log.warning("monitor %s: %s failed: %s", self.folder, row.path, reason)

    def _finish_success(self, row: FileRow) -> None:
        src = Path(row.path)
        if src.exists():
            try:
                if self.config.remove_sent:
                    src.unlink()
                    _fsync_dir(src.parent)
                else:
                    rel = os.path.relpath(src, self.folder)
                    _move(src, Path(self.config.success_dir) / rel)
            except OSError as exc:
                log.warning("monitor %s: sent %s but cannot remove it: %s", self.folder, src, exc)
        self._drop_objects(row.id)
        latency = None
        with contextlib.suppress(Exception):
            latency = time.time() - row.mtime_ns / 1e9
        self.journal.set_state(row.id, "done", "", latency=latency)
        row.state = "done"
        self._emit("done", {"id": row.id, "path": row.path})

    def _drop_objects(self, file_id: int) -> None:
        shutil.rmtree(self.objects_dir / str(file_id), ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MonitorSet:
    """Every configured folder monitor, sharing one journal."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        on_list: Callable[[Path], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        tick: float = 0.25,
        keep_days: float = 30.0,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.journal = Journal(state_dir / "monitor.sqlite")
        self.journal.prune(keep_days)
        configs = parse_monitors(settings.monitors, settings)
        self.monitors = [
            FolderMonitor(c, settings, self.journal, state_dir, on_list, on_event, tick)
            for c in configs
            if c.enabled
        ]

    def start(self) -> None:
        for m in self.monitors:
            m.start()

    def update_settings(self, settings: Settings) -> None:
        """New devices / conversion settings for the running monitors (same folders)."""
        self.settings = settings
        for m in self.monitors:
            m.settings = settings

    def stop(self) -> None:
        for m in self.monitors:
            m.stop()
        self.journal.close()

    def status(self) -> list[dict[str, Any]]:
        out = []
        for m in self.monitors:
            st = asdict(m.status)
            st["pending"] = len(m._candidates)
            st["counts"] = self.journal.counts(m.folder)
            out.append(st)
        return out
