"""File names → worklist search values, and automatic mapping of files to worklist entries
(SPEC S2: "file names can be parsed into search parameters; one match maps automatically,
none or several open the search").

A pattern is either

* a **name pattern** matched against the whole file name (not the folder), case-insensitively:
  ``{Field}`` captures a value, ``*`` matches any run of characters, ``?`` one character,
  everything else is literal. A field followed by a literal character stops before the next
  occurrence of that character (``{PatientID}_`` takes everything up to the first ``_``); a
  field followed by ``*``, ``?``, another field or the end takes as much as the rest allows.
  Example: ``{PatientID}_{LastName}_*.jpg`` on ``WL001_Muster_2.jpg`` gives
  PatientID ``WL001`` and LastName ``Muster``.
* a **regular expression** with named groups, written ``re:<expression>`` and matched against
  the whole file name (Python ``re.fullmatch``, case-insensitive), e.g.
  ``re:(?P<PatientID>\\d+)-(?P<PatientName>.+)\\.pdf``.

Fields (case and ``_`` do not matter: ``patient_id`` = ``PatientID``): PatientID, PatientName
(``LAST^FIRST``), LastName, FirstName, BirthDate, AccessionNumber, StudyDate, Modality,
StudyInstanceUID. (BirthDate is not a search key; it is there for callers that fill patient
data straight from the name, e.g. a monitored folder without a worklist.)

Which parsed values become search values follows the worklist device's defaults
("Fill patient id" / "… patient name", each optionally with a trailing ``*`` wildcard; the
device's modality, station and date defaults apply as in :func:`worklist.search`). DICOM
inputs are mapped by their own Patient ID / Patient's Name under the same flags ("parse DICOM
file to search and map").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pacsbox.sendtopacs.worklist import (
    WorklistConfigError,
    WorklistDevice,
    WorklistEntry,
    WorklistError,
    WorklistQuery,
    WorklistSession,
)

FIELDS = (
    "PatientID",
    "PatientName",
    "LastName",
    "FirstName",
    "BirthDate",
    "AccessionNumber",
    "StudyDate",
    "Modality",
    "StudyInstanceUID",
)
_CANON = {f.lower(): f for f in FIELDS}


class PatternError(ValueError):
    """The file-name pattern is not valid."""


def canonical_field(name: str) -> str:
    """``patient_id`` / ``PATIENTID`` / ``PatientID`` → ``PatientID``; unknown → PatternError."""
    key = name.replace("_", "").replace("-", "").strip().lower()
    if key not in _CANON:
        raise PatternError(f"unknown field {{{name}}} (known: {', '.join(FIELDS)})")
    return _CANON[key]


@dataclass
class FilenamePattern:
    """A compiled pattern; :meth:`match` gives the fields of a file name, or None."""

    text: str
    regex: re.Pattern[str] = field(init=False, repr=False)
    groups: dict[str, str] = field(init=False, repr=False)  #: regex group → field

    def __post_init__(self) -> None:
        text = self.text.strip()
        if not text:
            raise PatternError("the file-name pattern is empty")
        if len(text) > 500:
            raise PatternError("the file-name pattern is longer than 500 characters")
        self.groups = {}
        if text.startswith("re:"):
            try:
                self.regex = re.compile(text[3:], re.IGNORECASE)
            except re.error as exc:
                raise PatternError(f"file-name regex {text[3:]!r}: {exc}") from None
            if not self.regex.groupindex:
                raise PatternError("the file-name regex has no named group (?P<PatientID>...)")
            for group in self.regex.groupindex:
                self.groups[group] = canonical_field(group)
        else:
            self.regex = re.compile(self._translate(text), re.IGNORECASE | re.DOTALL)

    def _translate(self, text: str) -> str:
        tokens = re.findall(r"{[^{}]*}|\*|\?|[^{}*?]+|[{}]", text)
        out: list[str] = []
        for i, tok in enumerate(tokens):
            if tok.startswith("{") and tok.endswith("}") and len(tok) > 1:
                name = canonical_field(tok[1:-1])
                group = f"g{len(self.groups)}"
                if name in self.groups.values():
                    raise PatternError(f"field {{{name}}} appears twice in the pattern")
                self.groups[group] = name
                nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
                if nxt and nxt not in ("*", "?") and not nxt.startswith("{"):
                    out.append(f"(?P<{group}>[^{re.escape(nxt[0])}]+)")
                else:
                    out.append(f"(?P<{group}>.+)")
            elif tok == "*":
                out.append(".*")
            elif tok == "?":
                out.append(".")
            elif tok in ("{", "}"):
                raise PatternError(f"unbalanced brace in the file-name pattern {text!r}")
            else:
                out.append(re.escape(tok))
        if not self.groups:
            raise PatternError(f"the file-name pattern {text!r} has no {{Field}}")
        return "".join(out)

    def match(self, filename: str) -> dict[str, str] | None:
        """The fields of ``filename`` (its last path component), or None when it does not fit.
        Empty captures are left out; values are stripped."""
        m = self.regex.fullmatch(Path(filename).name)
        if m is None:
            return None
        out: dict[str, str] = {}
        for group, name in self.groups.items():
            value = (m.group(group) or "").strip()
            if value:
                out[name] = value
        return out


def fields_from_dicom(path: Path) -> dict[str, str] | None:
    """Patient ID and Patient's Name of a DICOM file (None: not DICOM) — the values the
    device's "fill patient id / name from the DICOM file" defaults search by."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["SpecificCharacterSet", "PatientID", "PatientName"],
        )
    except (InvalidDicomError, OSError, ValueError):
        return None
    out = {}
    for kw in ("PatientID", "PatientName"):
        value = str(ds.get(kw, "") or "").strip()
        if value:
            out[kw] = value
    return out


def query_for(fields: dict[str, str], device: WorklistDevice) -> WorklistQuery:
    """The search values for parsed ``fields`` under the device's "fill … / wildcard" flags."""
    q = WorklistQuery()
    pid = fields.get("PatientID", "")
    if pid and device.fill_patient_id:
        q.patient_id = pid + ("*" if device.patient_id_wildcard and not pid.endswith("*") else "")
    name = fields.get("PatientName", "")
    if not name and fields.get("LastName"):
        name = fields["LastName"]
        if fields.get("FirstName"):
            name += "^" + fields["FirstName"]
    if name and device.fill_patient_name:
        q.patient_name = name + (
            "*" if device.patient_name_wildcard and not name.endswith("*") else ""
        )
    q.accession_number = fields.get("AccessionNumber", "")
    q.study_instance_uid = fields.get("StudyInstanceUID", "")
    q.modality = fields.get("Modality", "").upper()
    if fields.get("StudyDate"):
        q.date = fields["StudyDate"]
    return q


def _identifying(q: WorklistQuery) -> bool:
    return any(v.strip("*? ") for v in (q.patient_id, q.patient_name, q.accession_number)) or bool(
        q.study_instance_uid
    )


@dataclass
class FileMapping:
    """How one file maps: ``mapped`` (exactly one usable match: ``entry``), ``choose``
    (none or several: ``candidates``, a person picks), or ``error`` (the search failed)."""

    path: Path
    status: str
    fields: dict[str, str] = field(default_factory=dict)
    query: WorklistQuery | None = None
    entry: WorklistEntry | None = None
    candidates: list[WorklistEntry] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "status": self.status,
            "fields": dict(self.fields),
            "query": asdict(self.query) if self.query else None,
            "entry": self.entry.as_dict() if self.entry else None,
            "candidates": [c.as_dict() for c in self.candidates],
            "message": self.message,
        }


SearchFn = Callable[[WorklistDevice, WorklistQuery], list[WorklistEntry]]


def auto_map(
    files: Iterable[Path],
    device: WorklistDevice,
    pattern: str | FilenamePattern | None,
    *,
    calling: str = "SENDTOPACS",
    use_dicom: bool = True,
    search_fn: SearchFn | None = None,
) -> list[FileMapping]:
    """Map each file to a worklist entry of ``device``.

    Non-DICOM files (and DICOM files when ``use_dicom`` is off) are parsed by ``pattern``;
    DICOM files give their own Patient ID / Name. Each distinct search is
    sent once. A file is ``mapped`` when its search returns exactly one entry and that entry
    has no invalid value; otherwise it is ``choose`` with the candidates (or ``error`` with
    the reason the search failed). The searches share one association (a
    :class:`worklist.WorklistSession`); ``search_fn`` replaces them (the service may pass its
    own, e.g. to share a cache)."""
    compiled = (
        pattern
        if isinstance(pattern, FilenamePattern) or pattern is None
        else FilenamePattern(pattern)
    )
    device.validate()
    session = WorklistSession(device, calling)
    try:
        return _auto_map(files, device, compiled, use_dicom, search_fn or _by(session))
    finally:
        session.close()


def _by(session: WorklistSession) -> SearchFn:
    def run(_device: WorklistDevice, query: WorklistQuery) -> list[WorklistEntry]:
        return session.search(query)

    return run


def _auto_map(
    files: Iterable[Path],
    device: WorklistDevice,
    compiled: FilenamePattern | None,
    use_dicom: bool,
    run: SearchFn,
) -> list[FileMapping]:
    cache: dict[tuple[str, ...], list[WorklistEntry] | str] = {}
    out: list[FileMapping] = []
    for path in files:
        path = Path(path)
        fields = fields_from_dicom(path) if use_dicom else None
        source = "DICOM attributes"
        if fields is None:
            source = "file name"
            if compiled is None:
                out.append(FileMapping(path, "choose", message="no file-name pattern is set"))
                continue
            fields = compiled.match(path.name)
            if fields is None:
                out.append(
                    FileMapping(
                        path,
                        "choose",
                        message=f"the file name does not match the pattern {compiled.text!r}",
                    )
                )
                continue
        query = query_for(fields, device)
        mapping = FileMapping(path, "choose", fields, query)
        out.append(mapping)
        if not _identifying(query):
            mapping.message = (
                f"nothing to search by in the {source} (patient id / name filling is off "
                "for this device, or no such field)"
            )
            continue
        key = tuple(asdict(query).values())
        if key not in cache:
            try:
                cache[key] = run(device, query)
            except (WorklistError, WorklistConfigError) as exc:
                cache[key] = str(exc)
        found = cache[key]
        if isinstance(found, str):
            mapping.status, mapping.message = "error", found
            continue
        mapping.candidates = list(found)
        usable = [e for e in found if not e.problem]
        if len(found) == 1 and usable:
            mapping.status, mapping.entry = "mapped", usable[0]
            mapping.message = f"mapped by {source}: {usable[0].label()}"
        elif not found:
            mapping.message = f"no worklist entry matches the {source}"
        elif len(found) == 1:
            mapping.message = f"the only match has invalid values: {found[0].problem}"
        else:
            mapping.message = f"{len(found)} worklist entries match the {source}"
    return out
