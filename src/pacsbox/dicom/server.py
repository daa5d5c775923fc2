"""The DICOM listeners: one pynetdicom AE per worker process on shared listening sockets.

Association acceptance (PS3.8 §9.3.2–9.3.4): the calling AE title is checked against the AE
registry (SPEC A6) and rejected with A-ASSOCIATE-RJ "calling-AE-title-not-recognized" when
unknown or disabled; presentation contexts are chosen per association (contexts.py). DICOM TLS
(PS3.15 Annex B.1, SPEC A8) is a second listening socket served by the same workers.

Throughput (SPEC A7, PERF): the parent process binds the sockets and every worker accepts from
the same sockets, so associations spread over cores without a global ingest lock; every
accepted socket gets TCP_NODELAY (each PDU goes out in one write, nothing waits for Nagle).
"""

from __future__ import annotations

import logging
import selectors
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pynetdicom
from pynetdicom import AE, build_context, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsbox.dicom.contexts import (
    VERIFICATION_SOP_CLASS,
    contexts_for_request,
    default_contexts,
)
from pacsbox.dicom.scp.find import FindSCP
from pacsbox.dicom.scp.retrieve import RetrieveSCP
from pacsbox.dicom.scp.storage import StorageSCP, handle_echo
from pacsbox.dicom.storage_acceptor import (
    PeerGone,
    StorageAcceptor,
    is_storage_only,
    peek_associate_rq,
)
from pacsbox.settings import Settings

if TYPE_CHECKING:
    from pacsbox.app import Archive

log = logging.getLogger("pacsbox.dicom")

# pynetdicom's default per-PDU log handlers run even at WARNING and one copies every data set
# (notes/dicom-toolkit.md); we log one line per association and per instance ourselves.
pynetdicom._config.LOG_HANDLER_LEVEL = "none"
# Both default to on and pretty-print every C-FIND/C-MOVE/C-GET identifier even when the text
# is thrown away (~6 % of a C-FIND response's time, bench/README.md "Query latency").
pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """Bind and listen; the socket is shared by all workers (non-blocking accept)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class SharedSocketServer(ThreadedAssociationServer):
    """A pynetdicom association server that accepts from an already listening socket.

    Several worker processes hold the same socket; a worker that loses the race for a
    connection gets EAGAIN, which socketserver treats as "no request".
    """

    shared_socket: socket.socket | None = None
    daemon_threads = True

    def server_bind(self) -> None:
        assert self.shared_socket is not None
        self.socket.close()
        self.socket = self.shared_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # already listening

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = self.socket.accept()  # BlockingIOError when another worker won
        client.settimeout(self.ae.network_timeout)  # ends stalled peers (see _route)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's own thread: the TLS handshake happens here, so a peer
        that connects and sends nothing never holds up the accept loop."""
        if self.ssl_context:
            request.settimeout(self.ae.acse_timeout)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                request.close()
                return
            request.settimeout(self.ae.network_timeout)
        super().finish_request(request, client_address)

    def server_close(self) -> None:
        pass  # the socket belongs to the parent; it closes it

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)  # the AE never listed us in its own servers


def _server_class(sock: socket.socket) -> type[SharedSocketServer]:
    return type("BoundSharedSocketServer", (SharedSocketServer,), {"shared_socket": sock})


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Server TLS context (PS3.15 B.1): TLS 1.2+, client certificates required if tls_ca."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca:
        ctx.load_verify_locations(str(settings.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class DicomService:
    """The DICOM side of one worker process: access control, logging, SCP handlers."""

    def __init__(self, archive: Archive, workers: int = 1) -> None:
        settings = archive.settings
        self.settings = settings
        self.archive = archive
        self.ingest = ingest = archive.ingest
        self.registry = registry = archive.registry
        self.storage = StorageSCP(ingest)
        self.find = FindSCP(archive)
        self.retrieve = RetrieveSCP(archive)
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self.ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        self.ae.maximum_pdu_size = settings.max_pdu_size
        self.ae.acse_timeout = settings.acse_timeout
        self.ae.dimse_timeout = settings.dimse_timeout
        self.ae.network_timeout = settings.network_timeout
        self.ae.maximum_associations = max(1, -(-settings.max_associations // workers))
        self.ae.supported_contexts = default_contexts()
        self.servers: list[ThreadedAssociationServer] = []
        self._stop = threading.Event()
        self.fast = StorageAcceptor(
            settings,
            ingest,
            registry,
            max_associations=settings.max_associations // max(1, workers) or 1,
            count_other=lambda: len(self.ae.active_associations),
            find=self.find,
        )

    # -- event handlers -----------------------------------------------------------------
    def on_requested(self, event: Event) -> None:
        """A-ASSOCIATE-RQ received: access control and per-association contexts."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = (primitive.calling_ae_title or "").strip()
        called = (primitive.called_ae_title or "").strip()
        host = assoc.requestor.address
        try:
            decision = self.registry.check_calling(
                calling,
                host,
                permissive=self.settings.permissive_aes,
                permissive_enabled=self.settings.permissive_aes_enabled,
            )
        except Exception:
            log.exception("AE registry unavailable; rejecting %s (transient)", calling)
            assoc.acse.send_reject(0x02, 0x01, 0x01)  # rejected-transient, no reason given
            assoc.kill()
            return
        if not decision.accepted:
            log.warning(
                "rejected association from %s:%s calling=%s called=%s: %s",
                host,
                assoc.requestor.port,
                calling,
                called,
                decision.reason,
            )
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, calling AE not recognized
            assoc.kill()
            return
        if decision.registered:
            log.info("auto-registered calling AE %s from %s (permissive)", calling, host)
        assoc.acceptor.supported_contexts = contexts_for_request(
            primitive.presentation_context_definition_list,
            self.settings.preferred_transfer_syntax,
        )

    def on_established(self, event: Event) -> None:
        assoc = event.assoc
        accepted = assoc.accepted_contexts
        summary = ", ".join(
            f"{cx.abstract_syntax.name}/{cx.transfer_syntax[0].name}" for cx in accepted[:8]
        )
        if len(accepted) > 8:
            summary += f", +{len(accepted) - 8} more"
        log.info(
            "association from %s:%s calling=%s called=%s accepted %d/%d contexts: %s",
            assoc.requestor.address,
            assoc.requestor.port,
            assoc.requestor.ae_title.strip(),
            assoc.acceptor.ae_title.strip(),
            len(accepted),
            len(accepted) + len(assoc.rejected_contexts),
            summary,
        )

    def on_ended(self, event: Event) -> None:
        assoc = event.assoc
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info(
            "association from %s calling=%s %s, %d instances stored",
            assoc.requestor.address,
            assoc.requestor.ae_title.strip(),
            how,
            getattr(assoc, "pacsbox_stored", 0),
        )

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, self.storage.handle_store),
            *self.find.handlers(),
            *self.retrieve.handlers(),
        ]

    # -- listening ----------------------------------------------------------------------
    def serve(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        """Start accepting on ``sock`` in a background thread.

        Plain connections are routed per association: storage/verification-only ones to the
        lean StorageAcceptor, everything else to pynetdicom (``debug`` sends all to
        pynetdicom, whose PDU-level log is then available). TLS goes to pynetdicom.
        """
        # pynetdicom deep-copies the server's context list for every association (~100 ms
        # for our 180 contexts); on_requested replaces it per association anyway, so the
        # server itself carries just one.
        server = self.ae.make_server(
            sock.getsockname()[:2],
            contexts=[build_context(VERIFICATION_SOP_CLASS)],
            evt_handlers=self.handlers(),
            ssl_context=ssl_context,
            server_class=_server_class(sock),
        )
        self.servers.append(server)
        if ssl_context is not None or self.settings.debug:
            target = server.serve_forever
            name = "TLSAcceptor" if ssl_context else "Acceptor"
        else:
            target = lambda: self._accept_loop(sock, server)  # noqa: E731
            name = "Acceptor"
        threading.Thread(target=target, name=name, daemon=True).start()

    def _accept_loop(self, sock: socket.socket, server: ThreadedAssociationServer) -> None:
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            if not selector.select(0.5):
                continue
            try:
                client, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                continue
            client.setblocking(True)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            threading.Thread(
                target=self._route,
                args=(client, address, server),
                daemon=True,
                name="Association",
            ).start()
        selector.close()

    def _route(
        self, client: socket.socket, address: Any, server: ThreadedAssociationServer
    ) -> None:
        try:
            rq = peek_associate_rq(client, self.settings.acse_timeout)
        except (PeerGone, OSError) as exc:
            log.info("connection from %s closed before association: %s", address[0], exc)
            client.close()
            return
        if rq is not None:
            fast, primitive = is_storage_only(rq)
            if fast and primitive is not None:
                self.fast.serve(client, address, primitive)
                return
        # pynetdicom blocks in recv() for a whole PDU and never checks its own timers there: a
        # socket time-out is what ends a stalled peer (R4).
        client.settimeout(self.settings.network_timeout)
        server.process_request(client, address)  # pynetdicom reads the untouched socket

    def shutdown(self) -> None:
        self._stop.set()
        for server in self.servers:
            threading.Thread(target=server.shutdown, daemon=True).start()
        for assoc in list(self.ae.active_associations):
            assoc.abort()


def debug_pdu_logging(enabled: bool, log_dir: Path | None = None) -> None:
    """``debug = true``: pynetdicom's PDU/DIMSE level logging (SPEC A10)."""
    if enabled:
        pynetdicom._config.LOG_HANDLER_LEVEL = "standard"
        logging.getLogger("pynetdicom").setLevel(logging.DEBUG)
