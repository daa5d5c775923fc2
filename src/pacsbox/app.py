"""Composition root (DESIGN.md): builds the archive services from the settings and runs the
listeners. Nothing else reads global state; tests build the same objects with their own
settings.

``serve`` binds the DICOM sockets in the parent process, then forks ``workers`` processes that
each run a pynetdicom AE accepting from those sockets (SPEC A7), and supervises them: a worker
that dies is restarted; SIGTERM/SIGINT stop everything. Workers die with the parent
(PR_SET_PDEATHSIG), so a crashed parent never leaves a half-alive archive holding the port.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import logging.handlers
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from pacsbox import __version__
from pacsbox.archive.index.db import create_db_engine, open_database
from pacsbox.archive.ingest import Ingest
from pacsbox.archive.registry import AERegistry
from pacsbox.archive.storage import FilesystemStore, MirroredStore
from pacsbox.settings import Settings

log = logging.getLogger("pacsbox")
LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


@dataclass
class Archive:
    """The archive services of one process."""

    settings: Settings
    engine: Engine
    store: FilesystemStore
    ingest: Ingest
    registry: AERegistry


def storage_root(settings: Settings) -> Path:
    return Path(settings.data_dir) / "storage"


def build_store(settings: Settings) -> FilesystemStore:
    root = storage_root(settings)
    if settings.backup_dir:
        return MirroredStore(root, Path(settings.backup_dir))
    return FilesystemStore(root)


def build_archive(
    settings: Settings, engine: Engine | None = None, migrate: bool = True
) -> Archive:
    """Open (and migrate) the index and build the services on top of it."""
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    assert settings.database_url
    if engine is None:
        engine = (
            open_database(settings.database_url)
            if migrate
            else create_db_engine(settings.database_url)
        )
    store = build_store(settings)
    ingest = Ingest(
        engine,
        store,
        storage_format=settings.storage_format,
        duplicate_policy=settings.duplicate_policy,
        patient_id_conflict=settings.patient_id_conflict,
    )
    return Archive(settings, engine, store, ingest, AERegistry(engine))


# -- logging ------------------------------------------------------------------------------
LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 10


class SharedFileHandler(logging.Handler):
    """The rotating log file (SPEC A10), written directly by every process that logs.

    Each record is formatted in the process (and thread) that logs it and appended with one
    ``write`` on an ``O_APPEND`` descriptor, so lines of concurrent processes never mix. This
    replaced shipping every record (one per stored instance) to the parent through a
    multiprocessing queue: pickling, a feeder thread and the parent's unpickling cost ~0.3 ms
    of CPU per instance. Rotation (at ``max_bytes``, ``backups`` files kept, the same names
    as logging's RotatingFileHandler) happens under an ``flock`` on ``<file>.lock``, done by
    whichever process first finds the file full; the others notice that the path names a
    new file at their next record and reopen it.
    """

    def __init__(
        self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._id: tuple[int, int] = (0, 0)
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        if old >= 0:
            os.close(old)

    def _current(self, incoming: int) -> None:
        """Reopen if another process rotated the file; rotate if this record would overflow."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._id
        except FileNotFoundError:
            same = False
        if not same:
            self._open()
        elif os.fstat(self._fd).st_size + incoming > self.max_bytes > 0:
            self._rotate(incoming)

    def _rotate(self, incoming: int) -> None:
        lock_fd = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if (
                st is not None
                and (st.st_dev, st.st_ino) == self._id
                and st.st_size + incoming > self.max_bytes
            ):  # nobody rotated it meanwhile
                for i in range(self.backups - 1, 0, -1):
                    src = f"{self.path}.{i}"
                    if os.path.exists(src):
                        os.replace(src, f"{self.path}.{i + 1}")
                if self.backups > 0:
                    os.replace(self.path, f"{self.path}.1")
                else:
                    os.truncate(self.path, 0)
            self._open()
        finally:
            os.close(lock_fd)  # releases the flock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            self._current(len(data))  # under self.lock (Handler.handle holds it)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


def file_log_handler(settings: Settings) -> logging.Handler:
    """Rotating log file in log_dir (SPEC A10): 20 MB x 10 files, shared by all processes."""
    log_dir = Path(settings.log_dir or Path(settings.data_dir) / "log")
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = SharedFileHandler(log_dir / "pacsbox.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def console_log_handler(settings: Settings) -> logging.Handler:
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    console.setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    return console


def _root_to(handlers: list[logging.Handler], level: int) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, SharedFileHandler):  # a forked worker's copy of the parent's
            old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == logging.DEBUG else 100)


def _set_pdeathsig() -> None:
    """Linux: receive SIGKILL when the parent dies (no orphan workers holding the port)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# -- worker process -----------------------------------------------------------------------
def _worker_main(
    settings: Settings,
    plain: socket.socket | None,
    tls: socket.socket | None,
    log_queue: Any,
    workers: int,
) -> None:
    _set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    level = logging.DEBUG if settings.debug else logging.INFO
    # The log file directly; the parent's console only gets what it shows (WARNING+).
    to_console = logging.handlers.QueueHandler(log_queue)
    to_console.setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    _root_to([file_log_handler(settings), to_console], level)
    from pacsbox.dicom.server import DicomService, debug_pdu_logging, tls_context

    debug_pdu_logging(settings.debug)
    archive = build_archive(settings, migrate=False)
    service = DicomService(archive, workers=workers)
    if plain is not None:
        service.serve(plain)
    if tls is not None:
        service.serve(tls, tls_context(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait: the handler runs even if another thread got it
        pass
    service.shutdown()
    archive.engine.dispose()


def _http_worker_main(settings: Settings, sock: socket.socket, log_queue: Any) -> None:
    """An HTTP worker (pacsbox.web.server): uvicorn on the socket bound by the parent."""
    _set_pdeathsig()
    level = logging.DEBUG if settings.debug else logging.INFO
    # like the DICOM workers: the log file directly, the parent's console WARNING+
    to_console = logging.handlers.QueueHandler(log_queue)
    to_console.setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    _root_to([file_log_handler(settings), to_console], level)
    from pacsbox.web.server import run_http

    run_http(settings, sock)


# -- serve --------------------------------------------------------------------------------
def banner(settings: Settings, plain: bool, tls: bool, http: bool = False) -> str:
    host = settings.bind_address
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    lines = [f"pacsbox {__version__} — archive in {Path(settings.data_dir).resolve()}"]
    if plain:
        lines.append(
            f"  DICOM      {settings.ae_title}@{shown}:{settings.dicom_port}"
            f"  (e.g. storescu -aec {settings.ae_title} {shown} {settings.dicom_port} FILE)"
        )
    if tls:
        lines.append(f"  DICOM TLS  {settings.ae_title}@{shown}:{settings.dicom_tls_port}")
    if http:
        from pacsbox.web.server import http_url

        url = http_url(settings, shown)
        lines.append(f"  HTTP       {url}/login  (REST API {url}/api/docs, health {url}/health)")
        lines.append(
            "             log in as a user of `pacsbox user list`; "
            "scripts: HTTP Basic or `pacsbox user token create NAME`"
        )
    if settings.hl7_port:
        lines.append(
            f"  HL7 is not part of this version yet (port {settings.hl7_port} stays closed)."
        )
    if not settings.permissive_aes:
        lines.append(
            "  Only registered calling AE titles are accepted: "
            "pacsbox ae add TITLE --host HOST --port PORT"
        )
    else:
        lines.append("  Permissive mode: unknown calling AE titles are accepted and registered.")
    lines.append(f"  Log        {Path(settings.log_dir or '').resolve() / 'pacsbox.log'}")
    return "\n".join(lines)


def serve(settings: Settings) -> int:
    """Run the listeners until SIGTERM/SIGINT. Returns the process exit status."""
    # Workers write the log file themselves (SharedFileHandler) and send only what the
    # console shows to this process, which prints it.
    log_queue: Any = mp.get_context("fork").Queue()
    listener = logging.handlers.QueueListener(
        log_queue, console_log_handler(settings), respect_handler_level=True
    )
    listener.start()
    level = logging.DEBUG if settings.debug else logging.INFO
    _root_to([file_log_handler(settings), console_log_handler(settings)], level)

    archive = build_archive(settings)  # creates data_dir, runs migrations once, here
    from pacsbox.archive.users import UserDirectory

    first_password = UserDirectory(archive.engine).ensure_default_admin()
    archive.engine.dispose()  # workers open their own connections after fork

    plain_sock = tls_sock = http_sock = None
    try:
        if settings.dicom_port:
            plain_sock = bind_or_explain(settings.bind_address, settings.dicom_port)
        if settings.dicom_tls_port and settings.tls_enabled:
            tls_sock = bind_or_explain(settings.bind_address, settings.dicom_tls_port)
        if settings.http_port:
            http_sock = bind_or_explain(settings.bind_address, settings.http_port)
    except OSError as exc:
        print(f"pacsbox: {exc}", file=sys.stderr)
        listener.stop()
        return 2

    print("Effective settings:", file=sys.stderr)
    for key, value in settings.masked().items():
        print(f"  {key} = {value}", file=sys.stderr)
    print(
        banner(settings, plain_sock is not None, tls_sock is not None, http_sock is not None),
        flush=True,
    )
    if first_password:
        # shown once, here, and written nowhere else (docs/admin.md "Default administrator")
        print(
            "\n  First start: created the administrator account\n"
            f"      user name: admin\n      password:  {first_password}\n"
            "  It is shown only this once and must be changed at the first login.\n"
            "  Lost it? pacsbox user passwd admin\n",
            flush=True,
        )
    log.info("pacsbox %s starting with %d DICOM workers", __version__, settings.effective_workers)

    if plain_sock is None and tls_sock is None:
        print("No DICOM port is open (dicom_port = 0 and no TLS).", flush=True)
    metrics_dir: Path | None = None
    if http_sock is not None and settings.http_workers > 1:
        # several HTTP processes: Prometheus counters are merged from per-process files
        metrics_dir = Path(settings.data_dir) / "tmp" / f"metrics-{os.getpid()}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for old in metrics_dir.glob("*.db"):
            old.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    ctx = mp.get_context("fork")
    n = settings.effective_workers
    procs: dict[int | str, Any] = {}

    def start(i: int) -> Any:
        proc = ctx.Process(
            target=_worker_main,
            args=(settings, plain_sock, tls_sock, log_queue, n),
            name=f"dicom-{i}",
            daemon=True,
        )
        proc.start()
        return proc

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start_http(i: int) -> Any:
        proc = ctx.Process(
            target=_http_worker_main,
            args=(settings, http_sock, log_queue),
            name=f"http-{i}",
            daemon=True,
        )
        proc.start()
        return proc

    starters: dict[Any, Any] = {}
    if plain_sock is not None or tls_sock is not None:
        for i in range(n):
            procs[i] = start(i)
            starters[i] = start
    if http_sock is not None:
        for i in range(settings.http_workers):
            procs[f"http-{i}"] = start_http(i)
            starters[f"http-{i}"] = start_http
    print("Ready.", flush=True)
    restarts: list[float] = []
    while not stop.wait(0.5):
        for i, proc in list(procs.items()):
            if not proc.is_alive():
                log.error("worker %s exited with %s; restarting", proc.name, proc.exitcode)
                restarts = [t for t in restarts if time.monotonic() - t < 60] + [time.monotonic()]
                if len(restarts) > 10:
                    log.critical("workers keep dying; stopping")
                    stop.set()
                    break
                procs[i] = starters[i](i if isinstance(i, int) else int(i.split("-")[1]))
    log.info("stopping")
    for proc in procs.values():
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs.values():
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    for sock in (plain_sock, tls_sock, http_sock):
        if sock is not None:
            sock.close()
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    listener.stop()
    print("pacsbox stopped.", flush=True)
    return 0


def bind_or_explain(host: str, port: int) -> socket.socket:
    from pacsbox.dicom.server import bind_listener

    try:
        return bind_listener(host, port)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
