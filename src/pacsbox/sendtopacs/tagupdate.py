"""Changes to DICOM inputs before they are sent (SPEC S3): tag update patterns, and "replace
full worklist info" (a DICOM file re-mapped onto a worklist entry). "Send as is" is simply no
change (``mode="as-is"`` in :func:`prepare`).

**Tag update pattern** (:class:`TagUpdate`): a target attribute — a keyword (``Modality``) or a
tag ``(gggg,eeee)`` / ``gggg,eeee`` / ``ggggeeee`` — and a value template in which
``{Keyword}``, ``{gggg,eeee}`` or ``{(gggg,eeee)}`` stands for that attribute's current value
(``{Modality} - test`` → ``CT - test``; ``{{`` / ``}}`` are literal braces). Templates read the
values the data set had *before* any pattern of the same list ran, so the order of patterns
does not matter. A multi-valued attribute reads as its values joined by ``\\`` (PS3.5 §6.4);
a missing one reads as empty.

When a pattern applies (SPEC S3):

=====================  ====================  ================  ==================
attribute is …         default               ``if_empty``      ``create``
=====================  ====================  ================  ==================
present, has a value   replaced              left alone        (as the others say)
present, empty         replaced              replaced          (as the others say)
missing                left alone            left alone        created
=====================  ====================  ================  ==================

The new value is checked against the attribute's VR and VM (PS3.5 §6.2: character repertoire,
length, DA/TM/UI/IS/DS/CS syntax; numeric VRs parsed; PN at most 5 components); a value that
does not fit raises :class:`TagUpdateError` and nothing of the data set is changed. Not
updatable: File Meta (group 0002), command (0000) and group-length elements, Pixel Data and
other bulk / binary VRs (OB OW OF OD OL OV UN), sequences (SQ), Specific Character Set (it
follows the values: when a new value cannot be written in the data set's character set, the
data set is switched to ISO_IR 192), and private tags (their VR is unknown). A change of
SOP Class / Instance UID is mirrored into the file meta (PS3.10 §7.1).

**Replace full worklist info** (:func:`apply_worklist`), PS3.3 §C.7.1.1 Patient and §C.7.2.1
General Study modules; the Request Attributes Macro (PS3.3 Table 10-9) for MWL entries:

* always written (empty when the worklist has no value; type 2): Patient's Name (0010,0010),
  Patient ID (0010,0020), Patient's Birth Date (0010,0030), Patient's Sex (0010,0040),
  Accession Number (0008,0050), Referring Physician's Name (0008,0090);
* written when the worklist gives them, else removed: Issuer of Patient ID (0010,0021),
  Study Description (0008,1030);
* written only when the worklist gives them (else kept): Study Instance UID (0020,000D),
  Study ID (0020,0010), Study Date (0008,0020), Study Time (0008,0030);
* removed (they describe the former patient): Other Patient IDs (0010,1000), Other Patient
  Names (0010,1001), Other Patient IDs Sequence (0010,1002), Patient's Birth Time
  (0010,0032), Patient's Age (0010,1010);
* MWL entry with a Requested Procedure ID: Request Attributes Sequence (0040,0275) replaced by
  one item (Requested Procedure ID, Accession Number, Study Instance UID when given,
  Requested Procedure Description, Scheduled Procedure Step ID and Description);
* kept: everything else, in particular SOP Instance UID and Series Instance UID.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from pacsbox.sendtopacs.patient import PatientInfo
from pacsbox.sendtopacs.worklist import WorklistEntry


class TagUpdateError(ValueError):
    """A tag update pattern is not valid, or its result does not fit the attribute."""


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
_TEXT_VRS |= {"UI", "UR", "UT"}
_SINGLE_TEXT = {"LT", "ST", "UT", "UR"}  #: backslash is a character, not a separator
_NUMERIC = {"US": int, "SS": int, "UL": int, "SL": int, "UV": int, "SV": int}
_NUMERIC |= {"FL": float, "FD": float}
_INT_RANGE = {
    "US": (0, 0xFFFF),
    "SS": (-0x8000, 0x7FFF),
    "UL": (0, 0xFFFFFFFF),
    "SL": (-0x80000000, 0x7FFFFFFF),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_FIELD = re.compile(r"{{|}}|{([^{}]*)}")


def parse_tag(text: str) -> int:
    """A keyword, ``(gggg,eeee)``, ``gggg,eeee`` or ``ggggeeee`` → the tag as an int."""
    name = text.strip()
    tag = tag_for_keyword(name)
    if tag is not None:
        return int(tag)
    hexpart = name.strip("()").replace(",", "").replace(" ", "")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", hexpart):
        return int(hexpart, 16)
    raise TagUpdateError(f"{text!r} is neither a DICOM keyword nor a tag (gggg,eeee)")


def tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _describe(tag: int) -> str:
    kw = keyword_for_tag(tag)
    return f"{kw} {tag_text(tag)}" if kw else tag_text(tag)


def _target_vr(tag: int) -> str:
    group, elem = tag >> 16, tag & 0xFFFF
    where = _describe(tag)
    if group in (0x0000, 0x0002):
        raise TagUpdateError(f"{where}: command and file meta elements cannot be updated")
    if group % 2:
        raise TagUpdateError(f"{where}: private tags cannot be updated (their VR is unknown)")
    if elem == 0x0000:
        raise TagUpdateError(f"{where}: group lengths cannot be updated")
    if tag == 0x00080005:
        raise TagUpdateError(f"{where}: the character set follows the values, set those")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise TagUpdateError(f"{where}: not in the DICOM dictionary") from None
    vr = vr.split(" or ")[0]
    if vr not in _TEXT_VRS and vr not in _NUMERIC:
        raise TagUpdateError(f"{where}: VR {vr} (binary data / sequence) cannot be updated")
    return vr


@dataclass
class TagUpdate:
    """One pattern: ``tag`` (keyword or tag) gets ``value`` (a template), see the module doc."""

    tag: str
    value: str = ""
    if_empty: bool = False  #: apply only when the current value is empty
    create: bool = False  #: create the attribute when it is missing

    def __post_init__(self) -> None:
        self.number = parse_tag(self.tag)
        self.vr = _target_vr(self.number)
        self._refs = template_fields(self.value)
        if not self._refs:  # a fixed value is checked now, not at the first file
            check_value(self.number, self.vr, _clean(self.vr, render(self.value, Dataset())))

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.number) or tag_text(self.number)

    def as_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "value": self.value, "if_empty": self.if_empty,
                "create": self.create}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TagUpdate:
        if not isinstance(data, dict) or "tag" not in data:
            raise TagUpdateError("a tag update must be an object with 'tag' and 'value'")
        return cls(
            str(data["tag"]),
            str(data.get("value", "")),
            bool(data.get("if_empty", False)),
            bool(data.get("create", False)),
        )

    @classmethod
    def parse(cls, text: str, *, if_empty: bool = False, create: bool = False) -> TagUpdate:
        """``Keyword=template`` or ``(gggg,eeee)=template`` (the CLI form)."""
        target, sep, value = text.partition("=")
        if not sep or not target.strip():
            raise TagUpdateError(f"tag update {text!r}: write TAG=VALUE, e.g. 'Modality=XC'")
        return cls(target.strip(), value, if_empty, create)


def template_fields(template: str) -> list[int]:
    """The tags a template reads; an unknown name or an unbalanced brace is an error."""
    refs: list[int] = []
    pos = 0
    for m in _FIELD.finditer(template):
        if "{" in template[pos : m.start()] or "}" in template[pos : m.start()]:
            raise TagUpdateError(f"template {template!r}: unbalanced brace")
        pos = m.end()
        if m.group(1) is not None:
            try:
                refs.append(parse_tag(m.group(1)))
            except TagUpdateError as exc:
                raise TagUpdateError(f"template {template!r}: {exc}") from None
    if "{" in template[pos:] or "}" in template[pos:]:
        raise TagUpdateError(f"template {template!r}: unbalanced brace")
    return refs


def _current(ds: Dataset, tag: int) -> str:
    if tag not in ds:
        return ""
    elem = ds[tag]
    value = elem.value
    if elem.VR == "SQ":
        raise TagUpdateError(f"{_describe(tag)} is a sequence; templates read single values")
    if isinstance(value, bytes | bytearray):
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            raise TagUpdateError(f"{_describe(tag)} is binary; templates read text values")
        value = value.decode("ascii", "replace")
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def render(template: str, ds: Dataset) -> str:
    """The template with each ``{field}`` replaced by the data set's current value."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return _current(ds, parse_tag(m.group(1)))

    template_fields(template)
    return _FIELD.sub(sub, template)


def check_value(tag: int, vr: str, text: str) -> Any:
    """``text`` as the value for ``tag`` (VR ``vr``), or TagUpdateError saying why not."""
    where = _describe(tag)
    if text == "":
        return None if vr in _NUMERIC else ""
    parts = [text] if vr in _SINGLE_TEXT else text.split("\\")
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        vm = "1-n"
    if vm == "1" and len(parts) > 1:
        raise TagUpdateError(f"{where}: one value only (VM 1), got {len(parts)}: {text!r}")
    if vr in _NUMERIC:
        kind = _NUMERIC[vr]
        values: list[Any] = []
        for p in parts:
            try:
                values.append(kind(p.strip()))
            except ValueError:
                raise TagUpdateError(f"{where}: {p!r} is not a number for VR {vr}") from None
            if vr in _INT_RANGE:
                lo, hi = _INT_RANGE[vr]
                if not lo <= values[-1] <= hi:
                    raise TagUpdateError(f"{where}: {p} is out of range for VR {vr}")
        return values[0] if len(values) == 1 else values
    for p in parts:
        if vr == "PN":
            for group in p.split("="):
                if group.count("^") > 4:
                    raise TagUpdateError(f"{where}: a name has at most 5 components ({p!r})")
                if len(group) > 64:
                    raise TagUpdateError(f"{where}: a name group is longer than 64 ({p!r})")
            if p.count("=") > 2:
                raise TagUpdateError(f"{where}: at most 3 component groups ({p!r})")
        if vr not in ("LT", "ST", "UT") and re.search(r"[\x00-\x1f\x7f]", p):
            raise TagUpdateError(f"{where}: control characters are not allowed in VR {vr}")
        try:
            validate_value(vr, p, config.RAISE)
        except ValueError as exc:
            msg = str(exc).split(" Please see")[0]
            raise TagUpdateError(f"{where}: {msg}") from None
    return text


def _clean(vr: str, text: str) -> str:
    """Padding is not part of a value (PS3.5 §6.2): coded VRs lose both ends, text VRs the
    trailing spaces; LT/ST/UT/UR keep everything."""
    if vr in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI") or vr in _NUMERIC:
        return text.strip()
    return text if vr in _SINGLE_TEXT else text.rstrip()


@dataclass
class Change:
    """What one pattern did: ``action`` is ``set``, ``created`` or ``skipped``."""

    tag: str
    action: str
    old: str = ""
    new: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _codec_ok(ds: Dataset, values: Iterable[str]) -> bool:
    from pydicom.charset import convert_encodings

    charsets = ds.get("SpecificCharacterSet", "ISO_IR 6") or "ISO_IR 6"
    if isinstance(charsets, str):
        charsets = [charsets]
    encodings = convert_encodings(list(charsets))
    text = "".join(v for v in values if isinstance(v, str))
    if text.isascii():
        return True
    if len(encodings) > 1:  # ISO 2022 code extensions: leave it to the writer only if ASCII
        return False
    try:
        text.encode(encodings[0])
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def _ensure_charset(ds: Dataset, values: Iterable[str]) -> None:
    """Switch to ISO_IR 192 (all text decoded first) when the new values need it."""
    values = list(values)
    if _codec_ok(ds, values):
        return
    ds.decode()
    ds.SpecificCharacterSet = "ISO_IR 192"


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    if tag in ds:
        ds[tag].value = value
    else:
        ds.add_new(tag, vr, value)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if tag == 0x00080016:
            meta.MediaStorageSOPClassUID = value
        elif tag == 0x00080018:
            meta.MediaStorageSOPInstanceUID = value


def apply_updates(ds: Dataset, updates: Sequence[TagUpdate]) -> list[Change]:
    """Apply ``updates`` to ``ds`` in place (all or nothing) and say what each did."""
    planned: list[tuple[TagUpdate, Any, str]] = []
    changes: list[Change] = []
    for up in updates:
        present = up.number in ds
        old = _current(ds, up.number) if present else ""
        if not present and not up.create:
            changes.append(Change(up.keyword, "skipped", reason="missing (create is off)"))
            continue
        if present and old.strip() and up.if_empty:
            changes.append(Change(up.keyword, "skipped", old, reason="has a value (if_empty)"))
            continue
        text = _clean(up.vr, render(up.value, ds))
        value = check_value(up.number, up.vr, text)
        planned.append((up, value, old))
        changes.append(Change(up.keyword, "set" if present else "created", old, text))
    _ensure_charset(ds, [v for _, v, _ in planned if isinstance(v, str)])
    for up, value, _old in planned:
        _set(ds, up.number, up.vr, value)
    return changes


def parse_updates(items: Iterable[dict[str, Any] | str | TagUpdate]) -> list[TagUpdate]:
    """Settings / CLI items → TagUpdate objects (the first bad one raises)."""
    out: list[TagUpdate] = []
    for item in items:
        if isinstance(item, TagUpdate):
            out.append(item)
        elif isinstance(item, str):
            out.append(TagUpdate.parse(item))
        else:
            out.append(TagUpdate.from_dict(item))
    return out


# -- replace full worklist info ---------------------------------------------------------------
_REMOVED = (0x00101000, 0x00101001, 0x00101002, 0x00100032, 0x00101010)


def apply_worklist(ds: Dataset, entry: WorklistEntry | PatientInfo) -> list[Change]:
    """Replace the patient / study attributes of ``ds`` by the worklist entry's (the exact
    list is in the module documentation). In place; validated first (all or nothing)."""
    wl = entry if isinstance(entry, WorklistEntry) else WorklistEntry(entry)
    p = wl.patient.validate(require=True)
    plan: list[tuple[int, str, str]] = [
        (0x00100010, "PN", p.patient_name),
        (0x00100020, "LO", p.patient_id),
        (0x00100030, "DA", p.birth_date),
        (0x00100040, "CS", p.sex),
        (0x00080050, "SH", p.accession_number),
        (0x00080090, "PN", p.referring_physician),
    ]
    removes = list(_REMOVED)
    for tag, vr, value in (
        (0x00100021, "LO", p.issuer_of_patient_id),
        (0x00081030, "LO", p.study_description),
    ):
        if value:
            plan.append((tag, vr, value))
        else:
            removes.append(tag)
    for tag, vr, value in (
        (0x0020000D, "UI", p.study_instance_uid),
        (0x00200010, "SH", p.study_id),
        (0x00080020, "DA", p.study_date),
        (0x00080030, "TM", p.study_time),
    ):
        if value:
            plan.append((tag, vr, value))
    checked = [(tag, vr, check_value(tag, vr, value)) for tag, vr, value in plan]
    request: Dataset | None = None
    if wl.requested_procedure_id:
        request = Dataset()
        request.RequestedProcedureID = check_value(0x00401001, "SH", wl.requested_procedure_id)
        request.AccessionNumber = p.accession_number
        if p.study_instance_uid:
            request.StudyInstanceUID = p.study_instance_uid
        if p.study_description:
            request.RequestedProcedureDescription = p.study_description
        if wl.sps_id:
            request.ScheduledProcedureStepID = check_value(0x00400009, "SH", wl.sps_id)
        if wl.sps_description:
            request.ScheduledProcedureStepDescription = check_value(
                0x00400007, "LO", wl.sps_description
            )
    _ensure_charset(ds, [v for _, _, v in checked if isinstance(v, str)])
    changes: list[Change] = []
    for tag, vr, value in checked:
        old = _current(ds, tag) if tag in ds else ""
        action = "set" if tag in ds else "created"
        _set(ds, tag, vr, value)
        changes.append(Change(keyword_for_tag(tag), action, old, str(value)))
    for tag in removes:
        if tag in ds:
            old = "" if ds[tag].VR == "SQ" else _current(ds, tag)
            del ds[tag]
            changes.append(Change(keyword_for_tag(tag), "removed", old))
    if request is not None:
        ds.RequestAttributesSequence = [request]
        changes.append(Change("RequestAttributesSequence", "set", "", wl.requested_procedure_id))
    return changes


def prepare(
    ds: Dataset,
    *,
    mode: str = "as-is",
    entry: WorklistEntry | PatientInfo | None = None,
    updates: Sequence[TagUpdate] = (),
) -> list[Change]:
    """What happens to a DICOM input before sending: ``mode`` ``as-is`` (no worklist change)
    or ``worklist`` (:func:`apply_worklist` with ``entry``), then the tag ``updates``."""
    changes: list[Change] = []
    if mode == "worklist":
        if entry is None:
            raise TagUpdateError("replace full worklist info needs a worklist entry")
        changes += apply_worklist(ds, entry)
    elif mode != "as-is":
        raise TagUpdateError(f"mode {mode!r}: as-is or worklist")
    if updates:
        changes += apply_updates(ds, updates)
    return changes
