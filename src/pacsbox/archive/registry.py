"""The AE registry (SPEC A6): remote application entities, their addresses and permissions.

Used to accept or reject calling AE titles at association time (PS3.8 §9.3.4 A-ASSOCIATE-RJ,
reason "calling-AE-title-not-recognized"), and later as the destinations of C-MOVE, forwarding
and routing. In permissive mode an unknown calling AE is accepted and registered, enabled or
disabled by setting, so an administrator can review it.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacsbox.archive.index.models import RemoteAE
from pacsbox.archive.index.writer import utcnow

AE_TABLE: Table = RemoteAE.__table__  # type: ignore[assignment]
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
EDITABLE = (
    "host",
    "port",
    "enabled",
    "description",
    "allow_store",
    "allow_query",
    "allow_retrieve",
    "is_destination",
    "tls",
)


class RegistryError(ValueError):
    """A registry change was refused (bad value, duplicate, unknown AE)."""


@dataclass
class AEEntry:
    ae_title: str
    host: str
    port: int
    enabled: bool = True
    description: str = ""
    allow_store: bool = True
    allow_query: bool = True
    allow_retrieve: bool = True
    is_destination: bool = True
    tls: bool = False
    auto_registered: bool = False
    created_at: datetime | None = None
    last_seen_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccessDecision:
    accepted: bool
    reason: str
    registered: bool = False


def normalise_title(title: str) -> str:
    title = (title or "").strip()
    if not _AE_RE.match(title):
        raise RegistryError(
            f"AE title {title!r} must be 1-16 printable ASCII characters without backslash"
        )
    return title


def _check_port(port: int) -> int:
    if not 0 < int(port) < 65536:
        raise RegistryError(f"port {port} must be between 1 and 65535")
    return int(port)


class AERegistry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list(self) -> list[AEEntry]:
        cols = [AE_TABLE.c[f] for f in AEEntry.__dataclass_fields__]
        with self.engine.connect() as conn:
            rows = conn.execute(select(*cols).order_by(AE_TABLE.c.ae_title)).all()
        return [AEEntry(*row) for row in rows]

    def get(self, title: str) -> AEEntry | None:
        cols = [AE_TABLE.c[f] for f in AEEntry.__dataclass_fields__]
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(AE_TABLE.c.ae_title == title.strip())).first()
        return AEEntry(*row) if row else None

    def add(self, entry: AEEntry) -> AEEntry:
        entry.ae_title = normalise_title(entry.ae_title)
        entry.port = _check_port(entry.port)
        entry.created_at = entry.created_at or utcnow()
        values = entry.as_dict()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(AE_TABLE).values(**values))
        except IntegrityError as exc:
            raise RegistryError(f"AE title {entry.ae_title!r} is already registered") from exc
        return entry

    def edit(self, title: str, **changes: Any) -> AEEntry:
        unknown = set(changes) - set(EDITABLE)
        if unknown:
            raise RegistryError(f"cannot edit {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "port" in changes:
            changes["port"] = _check_port(changes["port"])
        if changes:
            with self.engine.begin() as conn:
                n = conn.execute(
                    update(AE_TABLE).where(AE_TABLE.c.ae_title == title.strip()).values(**changes)
                ).rowcount
            if n == 0:
                raise RegistryError(f"AE title {title!r} is not registered")
        entry = self.get(title)
        if entry is None:
            raise RegistryError(f"AE title {title!r} is not registered")
        return entry

    def remove(self, title: str) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(delete(AE_TABLE).where(AE_TABLE.c.ae_title == title.strip())).rowcount
        if n == 0:
            raise RegistryError(f"AE title {title!r} is not registered")

    def check_calling(
        self,
        calling_title: str,
        peer_host: str,
        *,
        permissive: bool,
        permissive_enabled: bool,
    ) -> AccessDecision:
        """Decide whether an association from ``calling_title`` is accepted (SPEC A6)."""
        title = (calling_title or "").strip()
        entry = self.get(title) if title else None
        if entry is None:
            if not permissive:
                return AccessDecision(False, f"calling AE title {title!r} is not registered")
            try:
                normalise_title(title)
            except RegistryError as exc:  # empty, backslash, control characters: never register
                return AccessDecision(False, str(exc))
            # another association may register it at the same moment: that is fine
            with contextlib.suppress(RegistryError):
                self.add(
                    AEEntry(
                        ae_title=title,
                        host=peer_host,
                        port=104,
                        enabled=permissive_enabled,
                        description="auto-registered (permissive mode)",
                        auto_registered=True,
                        last_seen_at=utcnow(),
                    )
                )
            return AccessDecision(True, f"calling AE title {title!r} auto-registered", True)
        if not entry.enabled:
            return AccessDecision(False, f"calling AE title {title!r} is disabled")
        with self.engine.begin() as conn:
            conn.execute(
                update(AE_TABLE).where(AE_TABLE.c.ae_title == title).values(last_seen_at=utcnow())
            )
        return AccessDecision(True, "registered")
