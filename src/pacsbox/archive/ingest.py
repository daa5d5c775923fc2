"""The one ingest path (DESIGN.md): C-STORE, STOW-RS, import and upload all end here.

For each instance: read the header up to Pixel Data → apply the duplicate and patient-ID
policies → write the bytes durably (storage.py) → index them in one transaction → tell the
subscribers. Only then may the caller acknowledge (SPEC A3, R1).

Refusals carry the C-STORE status of PS3.4 §B.2.3 / the reference statement (SPEC A5), so the
DIMSE layer only copies them into the response and STOW-RS maps them to HTTP.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from pacsbox.archive.audit import AuditLog
from pacsbox.archive.header import (
    DEFLATED,
    HeaderError,
    InstanceHeader,
    read_header_chunks,
    read_header_prefix,
    read_part10,
)
from pacsbox.archive.index import writer
from pacsbox.archive.storage import (
    EXPLICIT_VR_LE,
    FilesystemStore,
    InvalidUID,
    check_uid,
    encode_file_meta,
)
from pacsbox.archive.structure import Truncated, check_complete

log = logging.getLogger("pacsbox.ingest")

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


class IngestRefused(Exception):
    """The instance was not stored; ``status`` is the C-STORE status to answer with."""

    status = 0xC000

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OutOfResources(IngestRefused):
    """A700: cannot create the local file (disk full, permissions)."""

    status = 0xA700


class DatabaseUnavailable(IngestRefused):
    """A701: cannot access the index database."""

    status = 0xA701


class OutOfMemory(IngestRefused):
    """A702: memory allocation failed."""

    status = 0xA702


class PatientIDConflict(IngestRefused):
    """A703: the study is already filed under another Patient ID (policy ``reject``)."""

    status = 0xA703


class DataSetMismatch(IngestRefused):
    """A900: the data set does not match the SOP class / the command's identification."""

    status = 0xA900


class CannotUnderstand(IngestRefused):
    """C000: the data set cannot be parsed or carries values that are not UIDs."""

    status = 0xC000


class DuplicateRejected(IngestRefused):
    """0111 (Duplicate SOP Instance, PS3.7 §C.4): policy ``reject`` and the UID is stored."""

    status = 0x0111


@dataclass(frozen=True)
class StoredInstance:
    """What ingest did with one instance; passed to subscribers ("instance stored" event)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    transfer_syntax_uid: str
    key: str
    size: int
    source_ae: str
    outcome: str  # "stored" | "replaced" | "kept"
    new_study: bool = False
    new_series: bool = False


Subscriber = Callable[[StoredInstance], None]


class Ingest:
    """Stores and indexes instances. Thread-safe; one per process."""

    def __init__(
        self,
        engine: Engine,
        store: FilesystemStore,
        *,
        storage_format: str = "part10",
        duplicate_policy: str = "replace",
        patient_id_conflict: str = "accept",
    ) -> None:
        self.engine = engine
        self.store = store
        self.storage_format = storage_format
        self.duplicate_policy = duplicate_policy
        self.patient_id_conflict = patient_id_conflict
        self.subscribers: list[Subscriber] = []
        #: The audit hook: callers aggregate per association/request in a StoreBatch
        #: (archive/audit.py) and write once at its end (no per-instance round trip).
        self.audit = AuditLog(engine)
        self.parents = writer.ParentCache()
        self.writer = writer.IndexWriter(engine)
        #: With the default policies nothing about an existing row changes what we do, so the
        #: look-up before writing is skipped (it happens under the write lock anyway).

    # -- entry points -------------------------------------------------------------------
    def store_dataset(
        self,
        dataset: bytes | memoryview | Sequence[bytes | memoryview],
        transfer_syntax_uid: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        source_ae: str = "",
    ) -> StoredInstance:
        """Store a data set as received on the wire (no file meta) in ``transfer_syntax_uid``.

        ``sop_class_uid``/``sop_instance_uid`` are the command's Affected SOP Class/Instance
        UIDs (PS3.7 §9.1.1); the data set must agree with them. ``dataset`` may be a list of
        fragments (as they arrived in P-DATA PDVs); they are written without joining.
        """
        chunks: Sequence[bytes | memoryview] = (
            [dataset] if isinstance(dataset, bytes | bytearray | memoryview) else dataset
        )
        try:
            hdr = read_header_chunks(chunks, transfer_syntax_uid)
        except HeaderError as exc:
            raise CannotUnderstand(str(exc)) from exc
        except MemoryError as exc:
            raise OutOfMemory("memory allocation failed while reading the data set") from exc
        self._validate(hdr, sop_class_uid, sop_instance_uid)
        try:
            if transfer_syntax_uid == DEFLATED:
                inflated = inflate(b"".join(chunks))
                check_complete([inflated], len(inflated), EXPLICIT_VR_LE)
            else:
                check_complete(chunks, sum(len(c) for c in chunks), transfer_syntax_uid)
        except (Truncated, HeaderError) as exc:
            raise CannotUnderstand(f"data set is incomplete: {exc}") from exc

        def write(key: str) -> int:
            out: list[bytes | memoryview] = []
            if self.storage_format == "part10":
                out.append(
                    encode_file_meta(
                        hdr.sop_class_uid, hdr.sop_instance_uid, transfer_syntax_uid, source_ae
                    )
                )
            out.extend(chunks)
            return self.store.put(key, out).size

        return self._store(hdr, transfer_syntax_uid, source_ae, write, self.storage_format)

    def store_dataset_file(
        self,
        path: Path,
        transfer_syntax_uid: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        source_ae: str = "",
    ) -> StoredInstance:
        """Like store_dataset for a bare data set spooled to ``path`` (large instances)."""
        if transfer_syntax_uid == DEFLATED:  # no prefix parse for deflate; rare for big data
            return self.store_dataset(
                Path(path).read_bytes(),
                transfer_syntax_uid,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                source_ae=source_ae,
            )
        try:
            with open(path, "rb") as fh:
                hdr = read_header_prefix(fh.read(4 << 20), transfer_syntax_uid)
                check_complete(fh, os.fstat(fh.fileno()).st_size, transfer_syntax_uid)
        except (HeaderError, Truncated) as exc:
            raise CannotUnderstand(str(exc)) from exc
        self._validate(hdr, sop_class_uid, sop_instance_uid)

        def write(key: str) -> int:
            meta = b""
            if self.storage_format == "part10":
                meta = encode_file_meta(
                    hdr.sop_class_uid, hdr.sop_instance_uid, transfer_syntax_uid, source_ae
                )
            return self.store.put_file(key, path, meta).size

        return self._store(hdr, transfer_syntax_uid, source_ae, write, self.storage_format)

    def store_file(self, path: Path, *, source_ae: str = "", link: bool = False) -> StoredInstance:
        """Store (copy) or index in place (``link``) a DICOM file: Part-10 or a bare data set."""
        try:
            info = read_part10(path)
        except HeaderError as exc:
            raise CannotUnderstand(f"{path}: {exc}") from exc
        hdr = info.header
        if hdr.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            raise CannotUnderstand(f"{path}: a DICOMDIR is a directory, not an instance")
        self._validate(hdr, None, None)
        ts = info.transfer_syntax_uid
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size - info.dataset_offset
                if ts == DEFLATED:
                    fh.seek(info.dataset_offset)
                    inflated = inflate(fh.read())
                    check_complete([inflated], len(inflated), EXPLICIT_VR_LE)
                else:
                    check_complete(fh, size, ts, base=info.dataset_offset)
        except (Truncated, HeaderError) as exc:
            raise CannotUnderstand(f"{path}: data set is incomplete: {exc}") from exc
        if link:
            absolute = str(Path(path).resolve())
            return self._store(
                hdr,
                ts,
                source_ae,
                lambda _key: os.stat(absolute).st_size,
                "part10" if info.has_meta else "native",
                linked_path=absolute,
            )

        def write(key: str) -> int:
            header = b""
            if self.storage_format == "part10":
                header = encode_file_meta(hdr.sop_class_uid, hdr.sop_instance_uid, ts, source_ae)
            return self.store.put_file(key, path, header, info.dataset_offset).size

        return self._store(hdr, ts, source_ae, write, self.storage_format)

    # -- the shared path ----------------------------------------------------------------
    @staticmethod
    def _validate(hdr: InstanceHeader, sop_class: str | None, sop_instance: str | None) -> None:
        for value, what in (
            (hdr.sop_class_uid, "SOP Class UID (0008,0016)"),
            (hdr.sop_instance_uid, "SOP Instance UID (0008,0018)"),
            (hdr.study_instance_uid, "Study Instance UID (0020,000D)"),
            (hdr.series_instance_uid, "Series Instance UID (0020,000E)"),
        ):
            if not value:
                raise DataSetMismatch(f"{what} is missing from the data set")
            try:
                check_uid(value, what)
            except InvalidUID as exc:
                raise CannotUnderstand(str(exc)) from exc
        if sop_class and sop_class != hdr.sop_class_uid:
            raise DataSetMismatch(
                f"SOP Class UID {hdr.sop_class_uid} in the data set differs from the "
                f"command's Affected SOP Class UID {sop_class}"
            )
        if sop_instance and sop_instance != hdr.sop_instance_uid:
            raise DataSetMismatch(
                f"SOP Instance UID {hdr.sop_instance_uid} in the data set differs from the "
                f"command's Affected SOP Instance UID {sop_instance}"
            )

    def _store(
        self,
        hdr: InstanceHeader,
        ts: str,
        source_ae: str,
        write: Callable[[str], int],
        storage_format: str,
        linked_path: str | None = None,
    ) -> StoredInstance:
        uid = hdr.sop_instance_uid
        existing = owner = None
        if self.duplicate_policy != "replace" or self.patient_id_conflict != "accept":
            try:
                with self.writer.transaction() as tx:
                    existing = tx.find_instance(uid)
                with self.engine.connect() as conn:
                    owner = writer.study_owner(conn, hdr.study_instance_uid)
            except (SQLAlchemyError, self.writer.db_error) as exc:
                raise DatabaseUnavailable(f"index database unavailable: {_db_reason(exc)}") from exc

        if existing is not None:
            if self.duplicate_policy == "reject":
                raise DuplicateRejected(f"SOP Instance {uid} is already stored")
            if self.duplicate_policy == "keep":
                log.info("duplicate %s kept (policy keep)", uid)
                return self._result(
                    hdr, ts, existing.file_path, existing.file_size, source_ae, "kept"
                )
        pid = (hdr.patient["patient_id"], hdr.patient["issuer_of_patient_id"])
        if owner is not None and (owner.patient_id, owner.issuer_of_patient_id) != pid:
            message = (
                f"study {hdr.study_instance_uid} is filed under Patient ID "
                f"{owner.patient_id!r}, the instance says {pid[0]!r}"
            )
            if self.patient_id_conflict == "reject":
                raise PatientIDConflict(message)
            log.warning("patient ID conflict accepted: %s", message)

        key = linked_path or self.store.key_for(
            hdr.study_instance_uid, hdr.series_instance_uid, uid
        )
        try:
            size = write(key)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfResources(f"disk full, unable to create local file: {exc}") from exc
            raise OutOfResources(f"unable to create local file: {exc.strerror or exc}") from exc
        except MemoryError as exc:
            raise OutOfMemory("memory allocation failed while writing") from exc

        attempt = 0
        while True:
            try:
                row, current = self._index(
                    hdr, ts, key, size, storage_format, linked_path, source_ae, existing
                )
                break
            except (SQLAlchemyError, self.writer.db_error) as exc:
                attempt += 1
                integrity = isinstance(exc, self.writer.integrity_error)
                if integrity:
                    # A cached parent row was deleted meanwhile, or a race on a unique key:
                    # look everything up again.
                    self.parents.clear()
                if attempt < 10 and (self.writer.retryable(exc) or (integrity and attempt == 1)):
                    # Deadlock / serialization failure between concurrent associations: the
                    # transaction was rolled back as a whole, so running it again is safe.
                    time.sleep(random.uniform(0.001, 0.005 * 2**attempt))
                    continue
                # The file stays: it may be the stored copy of an instance indexed earlier
                # (replace). An orphan is reported and indexed by `pacsbox check --repair`.
                raise DatabaseUnavailable(f"index database unavailable: {_db_reason(exc)}") from exc

        old = current if current is not None else None
        if old is not None and not old.linked and old.file_path != key:
            self.store.delete(old.file_path)
        result = self._result(
            hdr,
            ts,
            key,
            size,
            source_ae,
            "replaced" if old is not None else "stored",
            row.new_study,
            row.new_series,
        )
        for subscriber in self.subscribers:
            try:
                subscriber(result)
            except Exception:  # a subscriber never fails an acknowledged store
                log.exception("instance-stored subscriber failed for %s", uid)
        return result

    def _index(
        self,
        hdr: InstanceHeader,
        ts: str,
        key: str,
        size: int,
        storage_format: str,
        linked_path: str | None,
        source_ae: str,
        existing: writer.ExistingInstance | None,
    ) -> tuple[writer.StoredInstanceRow, writer.ExistingInstance | None]:
        """One write transaction: (re)check for a stored copy under the lock, then index."""
        uid = hdr.sop_instance_uid
        with self.writer.transaction() as tx:
            current = tx.find_instance(uid) if existing is None else existing
            if current is not None and existing is None and self.duplicate_policy == "reject":
                raise DuplicateRejected(f"SOP Instance {uid} is already stored")
            row = tx.record_instance(
                hdr,
                cache=self.parents,
                transfer_syntax_uid=ts,
                file_path=key,
                file_size=size,
                storage_format=storage_format,
                linked=linked_path is not None,
                source_ae=source_ae,
                replace_id=current.id if current is not None else None,
            )
        self.parents.put(hdr.series_instance_uid, row.parents)
        return row, current

    @staticmethod
    def _result(
        hdr: InstanceHeader,
        ts: str,
        key: str,
        size: int,
        source_ae: str,
        outcome: str,
        new_study: bool = False,
        new_series: bool = False,
    ) -> StoredInstance:
        return StoredInstance(
            sop_class_uid=hdr.sop_class_uid,
            sop_instance_uid=hdr.sop_instance_uid,
            series_instance_uid=hdr.series_instance_uid,
            study_instance_uid=hdr.study_instance_uid,
            patient_id=hdr.patient.get("patient_id", ""),
            transfer_syntax_uid=ts,
            key=key,
            size=size,
            source_ae=source_ae,
            outcome=outcome,
            new_study=new_study,
            new_series=new_series,
        )


def inflate(data: bytes) -> bytes:
    """A Deflated Explicit VR LE data set (PS3.5 §A.5) inflated; HeaderError if it is not."""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    except zlib.error as exc:
        raise HeaderError(f"deflated data set does not inflate: {exc}") from exc


def _db_reason(exc: Exception) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0][:200]
    return str(exc).splitlines()[0][:200]
