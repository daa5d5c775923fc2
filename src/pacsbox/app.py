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
def file_log_handler(settings: Settings) -> logging.Handler:
    """Rotating log file in log_dir (SPEC A10): 20 MB x 10 files."""
    log_dir = Path(settings.log_dir or Path(settings.data_dir) / "log")
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        log_dir / "pacsbox.log", maxBytes=20 * 1024 * 1024, backupCount=10, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def _root_to(handler: logging.Handler, level: int) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
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
    _root_to(logging.handlers.QueueHandler(log_queue), level)
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
    _root_to(logging.handlers.QueueHandler(log_queue), level)
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
    log_queue: Any = mp.get_context("fork").Queue()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    console.setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    listener = logging.handlers.QueueListener(
        log_queue, file_log_handler(settings), console, respect_handler_level=True
    )
    listener.start()
    level = logging.DEBUG if settings.debug else logging.INFO
    _root_to(logging.handlers.QueueHandler(log_queue), level)

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
