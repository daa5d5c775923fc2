"""The audit log (SPEC R3): who read, stored, changed, exported or deleted what, from where,
when, and whether it worked.

One call, :meth:`AuditLog.record`, is meant for the archive services (the HTTP layer calls it
for logins and for what its routes do). Events are rows of ``audit_event`` in the index
database, queried by :meth:`AuditLog.query` (the admin's ``GET /api/audit``).

Still to be wired where the services live (noted in docs/admin.md): ingest (``store`` per
instance, once the ingest path is stable), C-MOVE/C-GET and WADO (``read``/``export``),
forwarding (``export``), modification (``modify``) and purge (``delete``). Writing an event
never makes the audited operation fail: a database error is logged with the event instead.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, func, insert, select

from pacsbox.archive.index.auth_models import AuditEvent
from pacsbox.archive.index.writer import utcnow

log = logging.getLogger("pacsbox.audit")
AUDIT: Table = AuditEvent.__table__  # type: ignore[assignment]

#: The actions an event may record.
ACTIONS: tuple[str, ...] = (
    "read",
    "store",
    "modify",
    "export",
    "delete",
    "login",
    "login-failed",
    "logout",
    "admin",
)
OUTCOMES: tuple[str, ...] = ("success", "failure", "denied")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    username: str
    client: str
    action: str
    outcome: str
    study_uid: str
    series_uid: str
    sop_uid: str
    object: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditLog:
    """Writes and reads audit events. Thread-safe (one engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        action: str,
        *,
        user: str = "",
        client: str = "",
        outcome: str = "success",
        study_uid: str = "",
        series_uid: str = "",
        sop_uid: str = "",
        object: str = "",  # noqa: A002 - the audited object, as named in the table
        detail: str = "",
    ) -> None:
        """Record one event. ``user`` is a user name (or ``AE:<title>`` for DICOM peers),
        ``client`` the peer address."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {outcome!r}")
        values = dict(
            at=utcnow(),
            username=user[:64],
            client=client[:64],
            action=action,
            outcome=outcome,
            study_uid=study_uid[:64],
            series_uid=series_uid[:64],
            sop_uid=sop_uid[:64],
            object=object[:255],
            detail=detail[:1024],
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(AUDIT).values(**values))
        except Exception:
            log.exception("audit event not written: %s", values)

    def query(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        study_uid: str | None = None,
        object: str | None = None,  # noqa: A002
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[AuditRecord]]:
        """(total matching, the page of events newest first)."""
        conds = []
        if user:
            conds.append(AUDIT.c.username == user)
        if action:
            conds.append(AUDIT.c.action == action)
        if outcome:
            conds.append(AUDIT.c.outcome == outcome)
        if study_uid:
            conds.append(AUDIT.c.study_uid == study_uid)
        if object:
            conds.append(AUDIT.c.object == object)
        if since:
            conds.append(AUDIT.c.at >= since)
        if until:
            conds.append(AUDIT.c.at < until)
        limit = max(0, min(int(limit), MAX_LIMIT))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(AUDIT).where(*conds)).scalar_one()
            rows = conn.execute(
                select(*[AUDIT.c[f] for f in AuditRecord.__dataclass_fields__])
                .where(*conds)
                .order_by(AUDIT.c.at.desc(), AUDIT.c.id.desc())
                .limit(limit)
                .offset(max(0, int(offset)))
            ).all()
        return int(total), [AuditRecord(*r) for r in rows]
