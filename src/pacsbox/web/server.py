"""The HTTP worker process of ``pacsbox serve`` (SPEC E8): uvicorn on a socket bound by the
parent, HTTPS when a certificate is configured.

The parent binds the listening socket and forks ``http_workers`` of these; each opens its own
database connections and serves the same socket (the kernel spreads the connections). All
state (sessions, tokens, throttling) is in the database, so any process may answer any
request. Logging goes to the parent's queue like the DICOM workers'.
"""

from __future__ import annotations

import logging
import socket

from pacsbox.settings import Settings

log = logging.getLogger("pacsbox.http")


def run_http(settings: Settings, sock: socket.socket) -> None:
    """Serve HTTP(S) on ``sock`` until SIGTERM/SIGINT (uvicorn handles both gracefully)."""
    import uvicorn

    from pacsbox.app import build_archive
    from pacsbox.web.app import create_app

    archive = build_archive(settings, migrate=False)
    app = create_app(archive, settings)
    tls = settings.http_tls_files
    config = uvicorn.Config(
        app,
        log_config=None,  # the root logger already goes to the parent's queue
        access_log=False,  # one line per request comes from pacsbox.http instead
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        archive.engine.dispose()


def http_url(settings: Settings, host: str) -> str:
    scheme = "https" if settings.http_tls_files else "http"
    return f"{scheme}://{host}:{settings.http_port}"
