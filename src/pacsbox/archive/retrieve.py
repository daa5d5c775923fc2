"""Instance selection for C-MOVE / C-GET (PS3.4 §C.4.2.1.4, §C.4.3.1.3; SPEC B3, B5).

A retrieve identifier names what to send by its Query/Retrieve Level (0008,0052) and the
unique key of that level (PS3.4 §C.2.2.1, §C.4.2.1.4.1):

    PATIENT  Patient ID (0010,0020)            one value
    STUDY    Study Instance UID (0020,000D)    one or more UIDs (``\\``-separated list)
    SERIES   Series Instance UID (0020,000E)   one or more UIDs
    IMAGE    SOP Instance UID (0008,0018)      one or more UIDs

Hierarchical identifiers also carry the unique keys of the levels above (§C.4.2.1.4.1); when
present they restrict the selection further. Relational identifiers need not (§C.4.2.1.4.2).
Which levels a model allows is checked by the SCP (Patient Root, Study Root,
Patient/Study Only); this module only turns a valid request into SQL over the index tables.

``RetrieveSelection.count()`` answers first (the sub-operation total of the first response),
then ``iter()`` yields the matching instances ordered by study, series number and instance
number, reading file facts page by page, so nothing holds a whole study in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, Select, Table, and_, func, select

from pacsbox.archive.index.models import Instance, Patient, Series, Study

INSTANCE: Table = Instance.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]
STUDY: Table = Study.__table__  # type: ignore[assignment]
PATIENT: Table = Patient.__table__  # type: ignore[assignment]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: Unique key keyword of each level (PS3.4 §C.6.1.1 / §C.6.2.1).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
#: More UIDs than this in one key is refused (a bounded IN list on every database).
MAX_LIST_VALUES = 10_000
_LAST = 2_147_483_647  # sorts NULL numbers last on every database


class SelectionError(ValueError):
    """The identifier cannot select instances (C-MOVE/C-GET status A900)."""


@dataclass(frozen=True)
class RetrieveItem:
    """One instance to send: where its file is and how it is encoded."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    storage_format: str = "part10"


@dataclass
class RetrieveRequest:
    """The level and the unique key values of a retrieve identifier."""

    level: str
    patient_id: str | None = None
    study_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)


def _values(value: object) -> list[str]:
    """A DICOM value (str, list, MultiValue, None) as a list of stripped non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str | bytes):
        raw = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        items: Sequence[object] = raw.split("\\")
    else:
        try:
            items = list(value)  # type: ignore[call-overload]
        except TypeError:
            items = [value]
    out = [str(v).strip().rstrip("\x00").strip() for v in items]
    return [v for v in out if v]


def request_from_identifier(identifier: object, allowed_levels: Sequence[str]) -> RetrieveRequest:
    """Read level and unique keys from a pydicom Dataset identifier (PS3.4 §C.4.2.1.4).

    Raises SelectionError when the level is missing or not allowed by the information
    model, or when the level's unique key is missing, empty or holds a wildcard. Unique keys
    of higher levels restrict the selection when they hold literal values; empty or
    universal ones (``*``) are ignored, as are keys of lower levels (§C.4.2.1.4.1).
    """
    get = getattr(identifier, "get", None)
    if get is None:
        raise SelectionError("no identifier")
    level = str(get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise SelectionError("Query/Retrieve Level (0008,0052) is missing")
    if level not in allowed_levels:
        raise SelectionError(
            f"Query/Retrieve Level {level!r} is not valid for this information model "
            f"(allowed: {', '.join(allowed_levels)})"
        )
    depth = LEVELS.index(level)
    values: dict[str, list[str]] = {}
    for i, keyword in enumerate(LEVELS):
        key = UNIQUE_KEYS[keyword]
        found = _values(get(key, None))
        wild = any(ch in v for v in found for ch in "*?")
        if keyword == level:
            if not found:
                raise SelectionError(f"{key} is required at the {level} level")
            if wild:
                raise SelectionError(f"wildcards are not allowed in {key} of a retrieve")
            if keyword == "PATIENT" and len(found) > 1:
                raise SelectionError("one Patient ID per retrieve")
            if len(found) > MAX_LIST_VALUES:
                raise SelectionError(f"more than {MAX_LIST_VALUES} values in {key}")
        elif i > depth or wild or len(found) > MAX_LIST_VALUES:
            found = []  # keys below the level, or a universal match above it: not a filter
        elif keyword == "PATIENT" and "PATIENT" not in allowed_levels:
            found = []  # Study Root has no patient level: Patient ID is not a unique key
        values[keyword] = found
    return RetrieveRequest(
        level,
        patient_id=values["PATIENT"][0] if values["PATIENT"] else None,
        study_uids=values["STUDY"],
        series_uids=values["SERIES"],
        sop_uids=values["IMAGE"],
    )


class RetrieveSelection:
    """The instances a retrieve request matches (count, then stream)."""

    def __init__(self, engine: Engine, storage_root: Path, request: RetrieveRequest) -> None:
        self.engine = engine
        self.root = Path(storage_root)
        self.request = request

    def _where(self, stmt: Select) -> Select:
        r = self.request
        stmt = (
            stmt.select_from(INSTANCE)
            .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
            .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        )
        conds = []
        if r.patient_id is not None:
            stmt = stmt.join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
            conds.append(PATIENT.c.patient_id == r.patient_id)
        if r.study_uids:
            conds.append(STUDY.c.study_instance_uid.in_(r.study_uids))
        if r.series_uids:
            conds.append(SERIES.c.series_instance_uid.in_(r.series_uids))
        if r.sop_uids:
            conds.append(INSTANCE.c.sop_instance_uid.in_(r.sop_uids))
        return stmt.where(and_(*conds))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(self._where(select(func.count()))).scalar_one())

    def sop_classes(self) -> list[tuple[str, str]]:
        """Distinct (SOP class, stored transfer syntax) pairs: the contexts to propose."""
        stmt = self._where(
            select(INSTANCE.c.sop_class_uid, INSTANCE.c.transfer_syntax_uid).distinct()
        )
        with self.engine.connect() as conn:
            return sorted((str(a), str(b)) for a, b in conn.execute(stmt))

    def _order(self, stmt: Select) -> Select:
        return stmt.order_by(
            STUDY.c.id,
            func.coalesce(SERIES.c.series_number, _LAST),
            SERIES.c.id,
            func.coalesce(INSTANCE.c.instance_number, _LAST),
            INSTANCE.c.id,
        )

    def iter(self, batch: int = 500) -> Iterator[RetrieveItem]:
        """The matches, ordered by study, series number and instance number.

        First the ordered (id, SOP Instance UID) list (a few dozen bytes per match; at most
        65535 matches per retrieve), then the file facts in pages of ``batch`` rows, each page
        its own short query: no cursor stays open while the instances are being sent, so a
        slow destination cannot hit a database time-out (MariaDB ``net_write_timeout``) or keep
        a read snapshot open. An instance deleted meanwhile comes out with a path that does
        not exist, so its sub-operation fails and it is listed.
        """
        with self.engine.connect() as conn:
            order = [
                (int(i), str(u))
                for i, u in conn.execute(
                    self._order(self._where(select(INSTANCE.c.id, INSTANCE.c.sop_instance_uid)))
                )
            ]
        cols = (
            INSTANCE.c.id,
            INSTANCE.c.file_path,
            INSTANCE.c.linked,
            INSTANCE.c.sop_class_uid,
            INSTANCE.c.transfer_syntax_uid,
            INSTANCE.c.file_size,
            INSTANCE.c.storage_format,
        )
        for start in range(0, len(order), batch):
            page = order[start : start + batch]
            with self.engine.connect() as conn:
                rows = {
                    int(r[0]): r
                    for r in conn.execute(
                        select(*cols).where(INSTANCE.c.id.in_([i for i, _u in page]))
                    )
                }
            for instance_id, sop_uid in page:
                row = rows.get(instance_id)
                if row is None:
                    yield RetrieveItem(self.root / ".deleted" / sop_uid, "", sop_uid, "", 0)
                    continue
                _id, file_path, linked, sop_class, ts, size, fmt = row
                path = Path(file_path) if linked else self._path(file_path)
                yield RetrieveItem(path, str(sop_class), sop_uid, str(ts), int(size or 0), str(fmt))

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            # never leave the store root: a key like this fails its sub-operation (open fails)
            return self.root / ".invalid-key" / key.replace("/", "_")
        return self.root.joinpath(*parts)
