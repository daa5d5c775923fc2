"""Study share links (SPEC E7): an unguessable, expiring, revocable link to one study.

- A link token is ``secrets.token_urlsafe(32)`` (256 random bits, 43 characters). It is shown
  once, in the answer that creates the link; the table ``study_share`` (migration 0004) keeps
  only its SHA-256, so a copy of the database opens no study. Looking a token up is one
  indexed equality on the hash: no secret is compared character by character.
- Validity: ``valid_days`` / ``valid_months`` (calendar months) counted from the origin
  ``issue`` (the moment of creation) or ``study_date`` (midnight UTC of the Study Date), the
  origin chosen per link or by the setting ``share_validity_from``; or ``until`` a date (the
  link works through that day, UTC); with none of these ``share_default_days``. A link that
  would already be expired is refused.
- Revoking sets ``revoked_at``; an expired, revoked or unknown token, or one whose study was
  deleted, all resolve to nothing (the web layer answers the same 404 for each).
- Every use counts (``access_count``, ``last_access_at``); the audit events are written by
  the web layer (pacsbox.web.share) under the user name ``share:<id>``.

Times are naive UTC like the rest of the index (``utcnow``).
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import hashlib
import json
import os
import re
import secrets
import select as select_io
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    and_,
    insert,
    or_,
    select,
    update,
)

from pacsbox.archive.index.models import Base
from pacsbox.archive.index.writer import PATIENT, STUDY, utcnow

#: migration 0004
SHARE = Table(
    "study_share",
    Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    Column("created_by", String(64), nullable=False, index=True),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Column("validity_from", String(16), nullable=False),
    Column("note", String(255), nullable=False),
    Column("revoked_at", DateTime, nullable=True),
    Column("revoked_by", String(64), nullable=False),
    Column("last_access_at", DateTime, nullable=True),
    Column("access_count", Integer, nullable=False),
)

TOKEN_BYTES = 32
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_DAYS = 3650
ORIGINS = ("issue", "study_date")


class ShareError(ValueError):
    """A share request was refused; the message says why."""


class ShareNotFound(LookupError):
    """No such share (or not the caller's)."""


@dataclass(frozen=True)
class Validity:
    """How long a link is valid: exactly one of days, months, until; ``origin`` for the first
    two (None: the setting ``share_validity_from``)."""

    days: int | None = None
    months: int | None = None
    until: date | None = None
    origin: str | None = None


@dataclass(frozen=True)
class Share:
    """A share link as listed (never the token)."""

    id: int
    study_instance_uid: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    validity_from: str
    note: str
    revoked_at: datetime | None
    revoked_by: str
    last_access_at: datetime | None
    access_count: int
    patient_name: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    study_description: str | None = None

    def active(self, now: datetime | None = None) -> bool:
        return self.revoked_at is None and self.expires_at > (now or utcnow())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active()
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in out.items()}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus calendar months; the day is clamped to the target month's length."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def parse_study_date(value: str | None) -> datetime | None:
    """Midnight of a DA value (PS3.5 §6.2, ``YYYYMMDD``), None when absent or invalid."""
    text = (value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def expiry(
    validity: Validity,
    *,
    now: datetime,
    study_date: str | None,
    default_days: int,
    default_origin: str,
) -> tuple[datetime, str]:
    """(expires_at, origin used) for a validity request; raises :class:`ShareError`."""
    given = [v is not None for v in (validity.days, validity.months, validity.until)]
    if sum(given) > 1:
        raise ShareError("give one of valid_days, valid_months, until")
    if validity.until is not None:
        if validity.origin is not None:
            raise ShareError("'until' is a date; it takes no validity origin")
        end = datetime.combine(validity.until, datetime.min.time()) + timedelta(days=1)
        if end <= now:
            raise ShareError(f"until {validity.until.isoformat()} is in the past")
        if end > now + timedelta(days=MAX_DAYS + 1):
            raise ShareError(f"a link may be valid for at most {MAX_DAYS} days")
        return end, "until"
    origin = validity.origin or default_origin
    if origin not in ORIGINS:
        raise ShareError(f"validity origin must be one of {', '.join(ORIGINS)}")
    start = now
    if origin == "study_date":
        parsed = parse_study_date(study_date)
        if parsed is None:
            if validity.origin == "study_date":
                raise ShareError("the study has no valid Study Date to count the validity from")
            origin = "issue"  # the setting's origin cannot apply: count from now
        else:
            start = parsed
    if validity.months is not None:
        if not 1 <= validity.months <= MAX_DAYS // 30:
            raise ShareError(f"valid_months must be 1-{MAX_DAYS // 30}")
        end = add_months(start, validity.months)
    else:
        days = validity.days if validity.days is not None else default_days
        if not 1 <= days <= MAX_DAYS:
            raise ShareError(f"valid_days must be 1-{MAX_DAYS}")
        end = start + timedelta(days=days)
    if end <= now:
        raise ShareError(
            f"the link would already be expired ({origin.replace('_', ' ')} "
            f"{start.date().isoformat()} + validity ends {end.date().isoformat()})"
        )
    return end, origin


class ShareLinks:
    """Share links in the index database. Thread- and process-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _study_date(self, study_uid: str) -> tuple[bool, str | None]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(STUDY.c.study_date).where(STUDY.c.study_instance_uid == study_uid)
            ).first()
        return (row is not None, row.study_date if row is not None else None)

    def create(
        self,
        study_uid: str,
        created_by: str,
        validity: Validity,
        *,
        note: str = "",
        default_days: int = 7,
        default_origin: str = "issue",
        now: datetime | None = None,
    ) -> tuple[Share, str]:
        """A new link to an existing study; returns (share, token). The token is not
        stored and cannot be shown again."""
        exists, study_date = self._study_date(study_uid)
        if not exists:
            raise ShareNotFound(f"no study {study_uid}")
        now = now or utcnow()
        expires_at, origin = expiry(
            validity,
            now=now,
            study_date=study_date,
            default_days=default_days,
            default_origin=default_origin,
        )
        self.purge()  # links dead for a year leave the table (cheap: few rows)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        values = dict(
            token_hash=token_hash(token),
            study_instance_uid=study_uid,
            created_by=created_by[:64],
            created_at=now.replace(microsecond=0),
            expires_at=expires_at.replace(microsecond=0),
            validity_from=origin,
            note=(note or "")[:255],
            revoked_at=None,
            revoked_by="",
            last_access_at=None,
            access_count=0,
        )
        with self.engine.begin() as conn:
            new_id = conn.execute(insert(SHARE).values(**values)).inserted_primary_key[0]
        share = self.get(int(new_id))
        assert share is not None
        return share, token

    def _query(self) -> Any:
        return select(
            *[SHARE.c[f] for f in Share.__dataclass_fields__ if f in SHARE.c],
            PATIENT.c.patient_name,
            PATIENT.c.patient_id,
            STUDY.c.study_date,
            STUDY.c.study_description,
        ).select_from(
            SHARE.outerjoin(
                STUDY, STUDY.c.study_instance_uid == SHARE.c.study_instance_uid
            ).outerjoin(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
        )

    @staticmethod
    def _share(row: Any) -> Share:
        return Share(**dict(row._mapping))

    def get(self, share_id: int) -> Share | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._query().where(SHARE.c.id == share_id)).first()
        return None if row is None else self._share(row)

    def list(
        self,
        created_by: str | None = None,
        study_uid: str | None = None,
        active_only: bool = False,
        limit: int = 500,
        offset: int = 0,
    ) -> list[Share]:
        """Newest first; ``created_by`` None = everybody's."""
        stmt = self._query()
        if created_by is not None:
            stmt = stmt.where(SHARE.c.created_by == created_by)
        if study_uid is not None:
            stmt = stmt.where(SHARE.c.study_instance_uid == study_uid)
        if active_only:
            stmt = stmt.where(SHARE.c.revoked_at.is_(None), SHARE.c.expires_at > utcnow())
        stmt = stmt.order_by(SHARE.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [self._share(r) for r in conn.execute(stmt)]

    def revoke(self, share_id: int, by: str, created_by: str | None = None) -> Share:
        """Revoke (idempotent); ``created_by`` restricts to that creator's links."""
        cond = [SHARE.c.id == share_id]
        if created_by is not None:
            cond.append(SHARE.c.created_by == created_by)
        with self.engine.begin() as conn:
            found = conn.execute(select(SHARE.c.id).where(*cond)).first()
            if found is None:
                raise ShareNotFound(f"no share link {share_id}")
            conn.execute(
                update(SHARE)
                .where(*cond, SHARE.c.revoked_at.is_(None))
                .values(revoked_at=utcnow().replace(microsecond=0), revoked_by=by[:64])
            )
        share = self.get(share_id)
        assert share is not None
        return share

    def resolve(self, token: str, *, count: bool = False) -> Share | None:
        """The active share of ``token`` whose study still exists, else None. With
        ``count`` the access is counted."""
        if not TOKEN_RE.match(token or ""):
            return None
        now = utcnow()
        digest = token_hash(token)
        with self.engine.connect() as conn:
            row = conn.execute(
                self._query().where(
                    SHARE.c.token_hash == digest,
                    SHARE.c.revoked_at.is_(None),
                    SHARE.c.expires_at > now,
                    STUDY.c.id.is_not(None),
                )
            ).first()
        if row is None:
            return None
        share = self._share(row)
        if count:
            with self.engine.begin() as conn:
                conn.execute(
                    update(SHARE)
                    .where(SHARE.c.id == share.id)
                    .values(
                        access_count=SHARE.c.access_count + 1,
                        last_access_at=now.replace(microsecond=0),
                    )
                )
        return share

    def purge(self, older_than_days: int = 365) -> int:
        """Remove links expired or revoked more than ``older_than_days`` ago."""
        limit = utcnow() - timedelta(days=older_than_days)
        with self.engine.begin() as conn:
            return conn.execute(
                SHARE.delete().where(
                    or_(
                        SHARE.c.expires_at < limit,
                        and_(SHARE.c.revoked_at.is_not(None), SHARE.c.revoked_at < limit),
                    )
                )
            ).rowcount


# == JPEG Lossless copies for the share zip ================================================
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
#: stored syntaxes whose pixels are exact, so a JPEG Lossless copy loses nothing (PS3.5 §8.2:
#: native encodings, JPEG Lossless process 14, JPEG-LS Lossless, RLE, JPEG 2000 Lossless)
LOSSLESS_SOURCES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.90",
    }
)


def wants_jpeg_lossless(transfer_syntax_uid: str, rows: int | None) -> bool:
    """An image stored losslessly in another syntax than JPEG Lossless SV1."""
    return bool(rows) and transfer_syntax_uid in LOSSLESS_SOURCES


def jpeg_lossless_copy(path: str, prefix: bytes, workdir: str) -> bytes | None:
    """The Part-10 file of a stored instance with its pixel data re-encoded as JPEG Lossless,
    Non-Hierarchical, First-Order Prediction (Process 14, Selection Value 1; PS3.5 §A.4.1,
    transfer syntax 1.2.840.10008.1.2.4.70) by GDCM: same SOP Instance UID, same pixel values.

    ``prefix`` goes before the stored bytes (the File Meta of an instance stored without it).
    None when GDCM cannot encode it (more than 16 bits, float pixels, unusual layouts): the
    caller then keeps the original."""
    import gdcm

    made: list[str] = []
    try:
        if not _encodable(path, prefix):
            return None
        source = path
        if prefix:
            fd, source = tempfile.mkstemp(prefix="share-in-", suffix=".dcm", dir=workdir)
            made.append(source)
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                out.write(prefix)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        reader = gdcm.ImageReader()
        reader.SetFileName(source)
        if not reader.Read():
            return None
        image = reader.GetImage()
        pixel_format = image.GetPixelFormat()
        if pixel_format.GetBitsAllocated() > 16 or pixel_format.GetBitsStored() > 16:
            return None
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(image)
        if not change.Change():
            return None
        fd, target = tempfile.mkstemp(prefix="share-out-", suffix=".dcm", dir=workdir)
        os.close(fd)
        made.append(target)
        writer = gdcm.ImageWriter()
        writer.SetFileName(target)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            return None
        with open(target, "rb") as fh:
            return fh.read()
    except Exception:  # a codec error must not break the whole download
        return None
    finally:
        for name in made:
            with contextlib.suppress(OSError):
                os.unlink(name)


def _encodable(path: str, prefix: bytes) -> bool:
    """What JPEG Lossless can hold (PS3.5 §8.2.1: 2-16 bit precision; 1 or 3 samples), read
    with pydicom before GDCM sees the file (GDCM aborts the process on some layouts, e.g.
    1-bit segmentations)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    tags = [
        "BitsAllocated",
        "BitsStored",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelData",
    ]
    try:
        if prefix:
            with open(path, "rb") as fh:
                head = prefix + fh.read(1 << 16)
            ds = dcmread(DicomBytesIO(head), stop_before_pixels=True, force=True)
            has_pixels = True  # checked by the caller's index row (rows > 0)
        else:
            ds = dcmread(path, specific_tags=tags, force=True, defer_size=64)
            has_pixels = "PixelData" in ds
        allocated = int(ds.get("BitsAllocated", 0))
        stored = int(ds.get("BitsStored", 0))
        samples = int(ds.get("SamplesPerPixel", 1))
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    except Exception:
        return False
    return (
        has_pixels
        and allocated in (8, 16)
        and 2 <= stored <= 16
        and samples in (1, 3)
        and photometric in ENCODABLE_PHOTOMETRIC
    )


ENCODABLE_PHOTOMETRIC = frozenset(
    {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"}
)


class JpegLosslessEncoder:
    """Runs :func:`jpeg_lossless_copy` in a helper process (``python -c``, one per download,
    started on first use), so that a codec crash — GDCM aborts the process on some malformed
    data — costs one file's conversion, never the HTTP worker: the file is then kept as
    stored and the helper is started again. (The HTTP workers are daemonic multiprocessing
    children, which may not use multiprocessing pools.) Requests and answers are JSON lines
    on the helper's stdin/stdout; the converted file comes back through ``workdir``."""

    TIMEOUT = 300.0

    def __init__(self, func: str | None = None) -> None:
        #: ``"module:function"`` to run instead of jpeg_lossless_copy (tests)
        self._func = func or ""
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            code = (
                "from pacsbox.archive.sharing import _serve_encoder; "
                f"_serve_encoder({self._func!r})"
            )
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        return self._proc

    def encode(self, path: str, prefix: bytes, workdir: str) -> bytes | None:
        request = {"path": path, "prefix": base64.b64encode(prefix).decode(), "workdir": workdir}
        try:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select_io.select([proc.stdout], [], [], self.TIMEOUT)
            line = proc.stdout.readline() if ready else b""
        except OSError:
            line = b""
        if not line:  # crashed, hung or could not start: keep the original
            self.close(kill=True)
            return None
        try:
            out = json.loads(line).get("out")
        except ValueError:
            self.close(kill=True)
            return None
        if not out:
            return None
        try:
            with open(out, "rb") as fh:
                return fh.read()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(out)

    def close(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin:
                proc.stdin.close()
        if kill and proc.poll() is None:
            proc.kill()  # the helper this object started
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> JpegLosslessEncoder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _serve_encoder(func: str = "") -> None:
    """The helper process of :class:`JpegLosslessEncoder`: one JSON request per stdin line,
    one ``{"out": <file or null>}`` line per answer."""
    import importlib

    convert: Callable[[str, bytes, str], bytes | None] = jpeg_lossless_copy
    if func:
        module, _, name = func.partition(":")
        convert = getattr(importlib.import_module(module), name)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        data = convert(request["path"], base64.b64decode(request["prefix"]), request["workdir"])
        out = None
        if data is not None:
            fd, out = tempfile.mkstemp(prefix="share-jpeg-", suffix=".dcm", dir=request["workdir"])
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        sys.stdout.write(json.dumps({"out": out}) + "\n")
        sys.stdout.flush()
