"""Deleting studies, series and instances from the archive (index rows + files).

One write transaction removes the rows and keeps the counters behind the "Number of ...
Related ..." keys (PS3.4 §C.3.2) right: an emptied series, study or patient row goes too, and
the study's Modalities in Study is recomputed when a series goes. Files are removed after the
commit (never those indexed in place with ``import --link``), so a crash in between leaves
only orphan files, which ``pacsbox check --repair`` reports and re-indexes — nothing that was
acknowledged disappears without a committed delete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, delete, func, select, update

from pacsbox.archive.audit import AuditLog
from pacsbox.archive.index.db import write_connection
from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY
from pacsbox.archive.storage import FilesystemStore

log = logging.getLogger("pacsbox.delete")


class NotFound(LookupError):
    """No such study/series/instance in the index."""


@dataclass
class Deleted:
    level: str
    uid: str
    study_uid: str
    instances: int = 0
    series: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    files_kept: int = 0


class ArchiveDeletion:
    def __init__(self, engine: Engine, store: FilesystemStore) -> None:
        self.engine = engine
        self.store = store
        self.audit = AuditLog(engine)

    def _audited(self, result: Deleted, user: str, client: str, via: str) -> Deleted:
        """One ``delete`` audit event per deletion (PS3.15 A.5.3 "DICOM Instances Accessed"
        with action Delete), written after the commit. A failed write is only logged."""
        self.audit.record(
            "delete",
            user=user,
            client=client,
            study_uid=result.study_uid,
            series_uid=result.uid if result.level == "series" else "",
            sop_uid=result.uid if result.level == "instance" else "",
            detail=f"{via}{result.level} deleted: {result.instances} instance(s), "
            f"{result.bytes} bytes",
        )
        return result

    # -- public ---------------------------------------------------------------------------
    def delete_study(
        self, study_uid: str, *, user: str = "", client: str = "", via: str = ""
    ) -> Deleted:
        """Delete and audit (``user``/``client`` name who and from where; ``via`` prefixes
        the event's detail, e.g. ``"REST: "``)."""
        with write_connection(self.engine) as conn, conn.begin():
            st = conn.execute(
                select(STUDY.c.id, STUDY.c.patient_fk).where(
                    STUDY.c.study_instance_uid == study_uid
                )
            ).first()
            if st is None:
                raise NotFound(f"no study {study_uid}")
            result = Deleted("study", study_uid, study_uid)
            series_ids = [
                r.id for r in conn.execute(select(SERIES.c.id).where(SERIES.c.study_fk == st.id))
            ]
            for sid in series_ids:
                self._drop_series_rows(conn, sid, result)
            conn.execute(delete(STUDY).where(STUDY.c.id == st.id))
            self._patient_counters(conn, st.patient_fk, result, studies=1)
        self._remove_files(result)
        return self._audited(result, user, client, via)

    def delete_series(
        self, series_uid: str, *, user: str = "", client: str = "", via: str = ""
    ) -> Deleted:
        """Delete and audit (``user``/``client`` name who and from where; ``via`` prefixes
        the event's detail, e.g. ``"REST: "``)."""
        with write_connection(self.engine) as conn, conn.begin():
            se = conn.execute(
                select(
                    SERIES.c.id, SERIES.c.study_fk, STUDY.c.study_instance_uid, STUDY.c.patient_fk
                )
                .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
                .where(SERIES.c.series_instance_uid == series_uid)
            ).first()
            if se is None:
                raise NotFound(f"no series {series_uid}")
            result = Deleted("series", series_uid, se.study_instance_uid)
            self._drop_series_rows(conn, se.id, result)
            self._after_series_gone(conn, se.study_fk, se.patient_fk, result)
        self._remove_files(result)
        return self._audited(result, user, client, via)

    def delete_instance(
        self, sop_uid: str, *, user: str = "", client: str = "", via: str = ""
    ) -> Deleted:
        """Delete and audit (``user``/``client`` name who and from where; ``via`` prefixes
        the event's detail, e.g. ``"REST: "``)."""
        with write_connection(self.engine) as conn, conn.begin():
            row = conn.execute(
                select(
                    INSTANCE.c.id,
                    INSTANCE.c.file_path,
                    INSTANCE.c.file_size,
                    INSTANCE.c.linked,
                    INSTANCE.c.series_fk,
                    SERIES.c.study_fk,
                    STUDY.c.study_instance_uid,
                    STUDY.c.patient_fk,
                )
                .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
                .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
                .where(INSTANCE.c.sop_instance_uid == sop_uid)
            ).first()
            if row is None:
                raise NotFound(f"no instance {sop_uid}")
            result = Deleted("instance", sop_uid, row.study_instance_uid, instances=1)
            result.bytes = int(row.file_size or 0)
            if row.linked:
                result.files_kept += 1
            else:
                result.files.append(row.file_path)
            conn.execute(delete(INSTANCE).where(INSTANCE.c.id == row.id))
            conn.execute(
                update(SERIES)
                .where(SERIES.c.id == row.series_fk)
                .values(num_instances=SERIES.c.num_instances - 1)
            )
            conn.execute(
                update(STUDY)
                .where(STUDY.c.id == row.study_fk)
                .values(
                    num_instances=STUDY.c.num_instances - 1,
                    size_bytes=STUDY.c.size_bytes - result.bytes,
                )
            )
            conn.execute(
                update(PATIENT)
                .where(PATIENT.c.id == row.patient_fk)
                .values(num_instances=PATIENT.c.num_instances - 1)
            )
            left = conn.execute(
                select(func.count())
                .select_from(INSTANCE)
                .where(INSTANCE.c.series_fk == row.series_fk)
            ).scalar_one()
            if left == 0:
                conn.execute(delete(SERIES).where(SERIES.c.id == row.series_fk))
                result.series = 1
                self._after_series_gone(conn, row.study_fk, row.patient_fk, result, counted=True)
        self._remove_files(result)
        return self._audited(result, user, client, via)

    # -- helpers --------------------------------------------------------------------------
    def _drop_series_rows(self, conn: Connection, series_id: int, result: Deleted) -> None:
        n = size = 0
        for r in conn.execute(
            select(INSTANCE.c.file_path, INSTANCE.c.file_size, INSTANCE.c.linked).where(
                INSTANCE.c.series_fk == series_id
            )
        ):
            n += 1
            size += int(r.file_size or 0)
            if r.linked:
                result.files_kept += 1
            else:
                result.files.append(r.file_path)
        conn.execute(delete(INSTANCE).where(INSTANCE.c.series_fk == series_id))
        conn.execute(delete(SERIES).where(SERIES.c.id == series_id))
        result.instances += n
        result.bytes += size
        result.series += 1

    def _after_series_gone(
        self,
        conn: Connection,
        study_id: int,
        patient_id: int,
        result: Deleted,
        counted: bool = False,
    ) -> None:
        """A series (and its instances, in ``result``) went: fix the study and patient."""
        left = conn.execute(select(SERIES.c.modality).where(SERIES.c.study_fk == study_id)).all()
        if not left:
            conn.execute(delete(STUDY).where(STUDY.c.id == study_id))
            self._patient_counters(conn, patient_id, result, studies=1, counted=counted)
            return
        modalities = "\\".join(sorted({r.modality for r in left if r.modality}))[:256]
        values = dict(
            num_series=STUDY.c.num_series - 1,
            modalities_in_study=modalities,
        )
        if not counted:
            values.update(
                num_instances=STUDY.c.num_instances - result.instances,
                size_bytes=STUDY.c.size_bytes - result.bytes,
            )
        conn.execute(update(STUDY).where(STUDY.c.id == study_id).values(**values))
        self._patient_counters(conn, patient_id, result, studies=0, counted=counted)

    @staticmethod
    def _patient_counters(
        conn: Connection,
        patient_id: int,
        result: Deleted,
        studies: int,
        counted: bool = False,
    ) -> None:
        values = dict(
            num_studies=PATIENT.c.num_studies - studies,
            num_series=PATIENT.c.num_series - result.series,
        )
        if not counted:
            values["num_instances"] = PATIENT.c.num_instances - result.instances
        conn.execute(update(PATIENT).where(PATIENT.c.id == patient_id).values(**values))
        remaining = conn.execute(
            select(func.count()).select_from(STUDY).where(STUDY.c.patient_fk == patient_id)
        ).scalar_one()
        if remaining == 0:
            conn.execute(delete(PATIENT).where(PATIENT.c.id == patient_id))

    def _remove_files(self, result: Deleted) -> None:
        # Emptied study/series folders stay: every process's store caches the folders it
        # created (FilesystemStore._known_dirs), so removing one would fail later stores.
        from pacsbox.archive.video import cache_root_for, remove_cached

        videos = cache_root_for(self.store.root)
        for key in result.files:
            try:
                self.store.delete(key)
                remove_cached(videos, key)  # a browser-playable copy of a video, if made
            except (OSError, ValueError) as exc:
                log.warning("could not remove %s: %s", key, exc)
        log.info(
            "deleted %s %s: %d instance(s), %d series, %d bytes",
            result.level,
            result.uid,
            result.instances,
            result.series,
            result.bytes,
        )
