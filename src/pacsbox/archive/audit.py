"""The audit log (SPEC R3): who read, stored, changed, exported or deleted what, from where,
when, and whether it worked.

Events are rows of ``audit_event`` in the index database, written by the archive services
(PS3.15 Annex A.5 names the same kinds of events) and queried by :meth:`AuditLog.query` (the
admin's ``GET /api/audit``). Who writes what:

- ``store``: the ingest callers through a :class:`StoreBatch` (``Ingest.audit`` is the hook):
  one event per study per C-STORE association (lean acceptor and pynetdicom path, written when
  the association ends), per STOW-RS request, REST upload and ``pacsbox import`` run, with the
  counts; refusals as one ``failure`` event per study. Never one row per instance (C-STORE
  runs at hundreds/s).
- ``delete``: ``ArchiveDeletion`` after each committed deletion.
- ``export`` (C-MOVE, with the destination) / ``read`` (C-GET): the retrieve SCP, one event per
  study of the request; WADO-RS/WADO-URI/rendered reads: once per user, client and study in a
  time window (web/dicomweb.py); zip download: ``export`` by the REST route.
- C-FIND is not audited per request: it returns index attributes, not instances, and
  modalities/worklist clients poll it many times a minute; what is then retrieved is audited
  (QIDO-RS searches are, de-duplicated like the other DICOMweb reads).
- ``login``/``login-failed``/``logout``/``admin``: the HTTP layer (no archive service owns them).

Writing an event never makes the audited operation fail: a database error is logged instead.
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


class StoreBatch:
    """Store events of one association or one HTTP request, aggregated per study.

    Ingest runs at hundreds of instances a second over C-STORE, so the archive writes no
    audit row per instance: the caller (storage SCP, STOW-RS, upload, import) keeps one
    batch per association/request, counts each instance in memory (no database round trip)
    and calls :meth:`flush` when the association or request ends; that writes one ``store``
    event per study (instances stored/replaced/kept, bytes) and one ``store``/``failure``
    event per study with refusals. Not thread-safe: one batch belongs to one association.
    """

    def __init__(self, audit: AuditLog | None, user: str, client: str, via: str) -> None:
        self.audit = audit
        self.user = user
        self.client = client
        self.via = via
        self.studies: dict[str, dict[str, int]] = {}
        self.failures: dict[str, list[str]] = {}

    def stored(self, study_uid: str, outcome: str, size: int) -> None:
        tally = self.studies.get(study_uid)
        if tally is None:
            tally = self.studies[study_uid] = {"stored": 0, "replaced": 0, "kept": 0, "bytes": 0}
        tally[outcome] = tally.get(outcome, 0) + 1
        tally["bytes"] += size

    def failed(self, study_uid: str, reason: str) -> None:
        reasons = self.failures.setdefault(study_uid, [])
        if len(reasons) < 1000:
            reasons.append(reason)

    def flush(self) -> None:
        """Write the events gathered so far and start over. Never raises."""
        if self.audit is None:
            self.studies.clear()
            self.failures.clear()
            return
        try:
            for study, t in self.studies.items():
                n = t["stored"] + t["replaced"] + t["kept"]
                self.audit.record(
                    "store",
                    user=self.user,
                    client=self.client,
                    study_uid=study,
                    detail=f"{self.via}: {n} instance(s) ({t['stored']} new, "
                    f"{t['replaced']} replaced, {t['kept']} kept), {t['bytes']} bytes",
                )
            for study, reasons in self.failures.items():
                first = reasons[0] if reasons else ""
                self.audit.record(
                    "store",
                    user=self.user,
                    client=self.client,
                    outcome="failure",
                    study_uid=study,
                    detail=f"{self.via}: {len(reasons)} instance(s) refused; first: {first}",
                )
        except Exception:  # record() already logs database errors; this is for bugs
            log.exception("store audit events not written")
        finally:
            self.studies.clear()
            self.failures.clear()
