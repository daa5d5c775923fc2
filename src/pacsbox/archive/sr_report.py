"""Structured Reports as readable HTML, and Encapsulated Documents (SPEC E5).

- :func:`render_report` turns any SR document (Basic / Enhanced / Comprehensive / Comprehensive
  3D Text SR, Key Object Selection, measurement reports — PS3.3 §C.17.3 SR Document Content
  Module) into one self-contained HTML page: the document title (the root Concept Name), the
  patient/study header, the document status (PS3.3 §C.17.2 SR Document General Module:
  Completion Flag, Verification Flag, Verifying Observer, Author Observer, Preliminary Flag)
  and the content tree walked recursively. Every Value Type of PS3.3 Table C.17.3-7 is shown:
  CONTAINER (a heading per nesting level; CONTINUOUS text joined into a paragraph), TEXT,
  CODE, NUM (value + UCUM units, or the qualifier when there is no value), DATE, TIME,
  DATETIME, PNAME, UIDREF, COMPOSITE / IMAGE / WAVEFORM (the referenced SOP instance and
  frames), SCOORD / SCOORD3D / TCOORD (graphic type and point count), TABLE, and by-reference
  relationships (PS3.3 §C.17.3.2.5, Referenced Content Item Identifier). Every value is
  HTML-escaped; nothing from the data set becomes markup, attribute or URL.
- :func:`encapsulated_document` returns the document bytes of an Encapsulated Document
  (PS3.3 §A.45 Encapsulated PDF, §A.45.2 CDA, §A.85 STL/OBJ/MTL; Encapsulated Document Module
  §C.24.2) with its MIME type (0042,0012), trimmed to Encapsulated Document Length (0042,0015).
- :func:`load_instance` finds a stored instance by SOP Instance UID and reads its whole data
  set (Part-10 or a bare data set in the stored transfer syntax, deflate included).
"""

from __future__ import annotations

import html
import io
import re
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue

from pacsbox.archive.render import StoredImage
from pacsbox.archive.render import find_instance as render_find_instance

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"

#: nesting deeper than this is cut (hostile or broken trees); PS3.3 sets no limit
MAX_DEPTH = 64
#: content items rendered at most (the rest is summarised)
MAX_ITEMS = 20_000

#: MIME types of (0042,0012) served inline; anything else is an attachment, sandboxed
INLINE_MIME = frozenset(
    {"application/pdf", "text/plain", "image/jpeg", "image/png", "model/stl", "model/obj"}
)
_MIME_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,127}$"
)


class NotAReport(ValueError):
    """The instance holds no SR content tree / no encapsulated document."""


#: Where a stored instance is (from the index): path, transfer syntax, storage format, UIDs.
StoredInstance = StoredImage


def find_instance(engine: Any, store: Any, sop_uid: str) -> StoredInstance | None:
    """The index row of ``sop_uid`` (None when unknown)."""
    return render_find_instance(engine, store, None, None, sop_uid)


def _at_pixels(tag: Any, _vr: Any, _length: Any) -> bool:
    return int(tag) >= 0x7FE00010


def read_stored(item: StoredInstance, stop_before_pixels: bool = False) -> Dataset:
    """The data set of a stored instance (without Pixel Data and what follows it when
    ``stop_before_pixels``: an SR needs none, a large image is then not read). Raises
    OSError (missing file) or NotAReport (unreadable)."""
    with open(item.path, "rb") as fh:
        head = fh.read(132)
        fh.seek(0)
        try:
            if len(head) == 132 and head[128:132] == b"DICM":
                # pydicom inflates deflated Part-10 files itself
                return dcmread(fh, force=True, stop_before_pixels=stop_before_pixels)
            ts = item.transfer_syntax_uid
            stream: Any = fh
            if ts == DEFLATED_LE:
                stream = io.BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read()))
            return read_dataset(
                stream,
                is_implicit_VR=ts == IMPLICIT_LE,
                is_little_endian=ts != EXPLICIT_BE,
                stop_when=_at_pixels if stop_before_pixels else None,
            )
        except Exception as exc:  # any parse problem of a stored object
            raise NotAReport(f"the stored object cannot be read: {exc}") from exc


def load_instance(
    engine: Any, store: Any, sop_uid: str, stop_before_pixels: bool = False
) -> tuple[StoredInstance, Dataset] | None:
    """The index row and data set of ``sop_uid`` (None when unknown)."""
    item = find_instance(engine, store, sop_uid)
    if item is None:
        return None
    return item, read_stored(item, stop_before_pixels)


# == Encapsulated Document (PS3.3 §C.24.2) ===================================================
@dataclass(frozen=True)
class Document:
    data: bytes
    mime: str  #: (0042,0012), validated; application/octet-stream when absent or malformed
    inline: bool  #: safe to show in the browser (INLINE_MIME)
    title: str


def encapsulated_document(ds: Dataset) -> Document:
    """The Encapsulated Document (0042,0011) of ``ds``. Raises NotAReport without one."""
    elem = ds.get((0x0042, 0x0011))
    if elem is None or elem.value is None:
        raise NotAReport("the instance has no Encapsulated Document (0042,0011)")
    data = bytes(elem.value)
    length = _int(ds.get("EncapsulatedDocumentLength"))
    if length is not None and 0 <= length <= len(data):
        data = data[:length]  # the value is padded to even length (PS3.5 §7.1)
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "").strip().lower()
    if not _MIME_RE.match(mime):
        mime = "application/octet-stream"
    return Document(data, mime, mime in INLINE_MIME, str(ds.get("DocumentTitle", "") or ""))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# == SR rendering (PS3.3 §C.17.3) ============================================================
def is_report(ds: Dataset) -> bool:
    """An SR Document Content Module is present: the root is a CONTAINER (§C.17.3)."""
    return str(ds.get("ValueType", "")).strip().upper() == "CONTAINER"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _code(item: Dataset | None) -> str:
    """A code (PS3.3 §8.8, Table 8.8-1): its meaning, with scheme and value in a title."""
    if item is None:
        return ""
    meaning = str(item.get("CodeMeaning", "") or "").strip()
    value = str(item.get("CodeValue", "") or item.get("LongCodeValue", "") or "")
    value = value or str(item.get("URNCodeValue", "") or "")
    scheme = str(item.get("CodingSchemeDesignator", "") or "")
    tip = f"{scheme} {value}".strip()
    shown = meaning or tip or "(code)"
    if tip:
        return f'<span class="code" title="{_e(tip)}">{_e(shown)}</span>'
    return f'<span class="code">{_e(shown)}</span>'


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _date(value: Any) -> str:
    text = str(value or "").strip()
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _time(value: Any) -> str:
    text = str(value or "").strip()
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not m:
        return text
    return ":".join(p for p in m.groups()[:3] if p) + (m.group(4) or "")


def _datetime(value: Any) -> str:
    text = str(value or "").strip()
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d+)?)?([+-]\d{4})?", text)
    if not m:
        return text
    out = _date(m.group(1))
    if m.group(2):
        out += " " + _time(m.group(2))
    if m.group(3):
        out += " " + m.group(3)
    return out


def _pname(value: Any) -> str:
    """A Person Name (PS3.5 §6.2.1): ``Family^Given^Middle^Prefix^Suffix`` as ``Prefix Given
    Middle Family Suffix`` (alphabetic group)."""
    text = str(value or "").split("=")[0]
    parts = [p.strip() for p in text.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    words = [w for w in (prefix, given, middle, family) if w]
    name = " ".join(words)
    return f"{name}, {suffix}" if suffix else name


def _units(item: Dataset | None) -> str:
    if item is None:
        return ""
    value = str(item.get("CodeValue", "") or "")
    if str(item.get("CodingSchemeDesignator", "")) == "UCUM":
        if value in ("1", "{ratio}"):
            return ""
        return f'<span class="unit" title="{_e(item.get("CodeMeaning", ""))}">{_e(value)}</span>'
    return _code(item)


def _number(value: Any) -> str:
    text = str(value if value is not None else "").strip()
    return text


def _refs(item: Dataset) -> str:
    """COMPOSITE / IMAGE / WAVEFORM: the referenced SOP instance (PS3.3 §C.17.3.2.3)."""
    out = []
    for ref in item.get("ReferencedSOPSequence", []) or []:
        uid = str(ref.get("ReferencedSOPInstanceUID", "") or "")
        cls = str(ref.get("ReferencedSOPClassUID", "") or "")
        text = f'<span class="uid">{_e(uid)}</span>'
        try:
            from pydicom.uid import UID

            name = UID(cls).name if cls else ""
        except Exception:
            name = cls
        if name:
            text += f' <span class="muted">({_e(name)})</span>'
        frames = ref.get("ReferencedFrameNumber")
        if frames not in (None, ""):
            values = frames if isinstance(frames, MultiValue | list | tuple) else [frames]
            text += f' <span class="muted">frame {_e(", ".join(str(f) for f in values))}</span>'
        out.append(text)
    return "; ".join(out) or '<span class="muted">(no reference)</span>'


def _value(item: Dataset, value_type: str) -> str:
    """The HTML of one content item's value (PS3.3 Table C.17.3-7)."""
    if value_type == "TEXT":
        text = str(item.get("TextValue", "") or "")
        return f'<span class="text">{_e(text)}</span>'
    if value_type == "CODE":
        return _code(_first(item, "ConceptCodeSequence"))
    if value_type == "NUM":
        mv = _first(item, "MeasuredValueSequence")
        if mv is None:
            qualifier = _first(item, "NumericValueQualifierCodeSequence")
            return (
                _code(qualifier)
                if qualifier is not None
                else '<span class="muted">(no value)</span>'
            )
        number = _number(mv.get("NumericValue"))
        units = _units(_first(mv, "MeasurementUnitsCodeSequence"))
        return f'<span class="num">{_e(number)}</span>' + (f" {units}" if units else "")
    if value_type == "DATE":
        return _e(_date(item.get("Date")))
    if value_type == "TIME":
        return _e(_time(item.get("Time")))
    if value_type == "DATETIME":
        return _e(_datetime(item.get("DateTime")))
    if value_type == "PNAME":
        return f'<span class="pname">{_e(_pname(item.get("PersonName")))}</span>'
    if value_type == "UIDREF":
        return f'<span class="uid">{_e(item.get("UID", ""))}</span>'
    if value_type in ("COMPOSITE", "IMAGE", "WAVEFORM"):
        return _refs(item)
    if value_type in ("SCOORD", "SCOORD3D"):
        data = item.get("GraphicData") or []
        count = len(data) // (3 if value_type == "SCOORD3D" else 2)
        kind = str(item.get("GraphicType", "") or "")
        return _e(f"{kind} ({count} point{'s' if count != 1 else ''})")
    if value_type == "TCOORD":
        kind = str(item.get("TemporalRangeType", "") or "")
        return _e(f"{kind} (temporal range)")
    if value_type == "TABLE":
        return _e(
            f"table {item.get('NumberOfTableRows', '?')} x {item.get('NumberOfTableColumns', '?')}"
        )
    return f'<span class="muted">({_e(value_type or "unknown value type")})</span>'


class _Renderer:
    def __init__(self) -> None:
        self.count = 0
        self.cut = 0

    def children(self, parent: Dataset, depth: int, number: str) -> list[str]:
        out: list[str] = []
        for i, item in enumerate(parent.get("ContentSequence", []) or [], start=1):
            if self.count >= MAX_ITEMS:
                self.cut += 1
                continue
            self.count += 1
            out.append(self.item(item, depth, f"{number}.{i}"))
        return out

    def item(self, item: Dataset, depth: int, number: str) -> str:
        relation = str(item.get("RelationshipType", "") or "").strip().upper()
        rel_html = (
            f'<span class="rel" title="relationship">{_e(relation.lower())}</span> '
            if relation and relation not in ("CONTAINS",)
            else ""
        )
        by_ref = item.get("ReferencedContentItemIdentifier")
        if by_ref is not None and "ValueType" not in item:
            values = by_ref if isinstance(by_ref, MultiValue | list | tuple) else [by_ref]
            target = ".".join(str(v) for v in values) or "?"
            return (
                f'<li class="item" id="item-{_e(number)}">{rel_html}'
                f'<span class="muted">see item {_e(target)}</span></li>'
            )
        value_type = str(item.get("ValueType", "") or "").strip().upper()
        concept = _code(_first(item, "ConceptNameCodeSequence"))
        if value_type == "CONTAINER":
            return self.container(item, depth + 1, number, concept, rel_html)
        inner = ""
        if depth < MAX_DEPTH and item.get("ContentSequence"):
            kids = self.children(item, depth + 1, number)
            inner = f'<ul class="tree">{"".join(kids)}</ul>'
        elif item.get("ContentSequence"):
            inner = '<p class="muted">(nesting too deep: not shown)</p>'
        label = f'<span class="concept">{concept}:</span> ' if concept else ""
        css = "item obs" if relation == "HAS OBS CONTEXT" else "item"
        return (
            f'<li class="{css}" id="item-{_e(number)}">{rel_html}{label}'
            f"{_value(item, value_type)}{inner}</li>"
        )

    def container(self, item: Dataset, depth: int, number: str, concept: str, rel: str) -> str:
        level = min(depth + 1, 6)
        heading = f'<h{level} class="heading">{rel}{concept or "(untitled section)"}</h{level}>'
        if depth >= MAX_DEPTH:
            return f'<li class="section">{heading}<p class="muted">(nesting too deep)</p></li>'
        continuous = str(item.get("ContinuityOfContent", "") or "").upper() == "CONTINUOUS"
        seq = item.get("ContentSequence", []) or []
        if (
            continuous
            and seq
            and all(
                str(c.get("ValueType", "")).upper() == "TEXT" and "ContentSequence" not in c
                for c in seq
            )
        ):
            self.count += len(seq)
            text = " ".join(str(c.get("TextValue", "") or "") for c in seq)
            return f'<li class="section">{heading}<p class="text">{_e(text)}</p></li>'
        kids = self.children(item, depth, number)
        body = f'<ul class="tree">{"".join(kids)}</ul>' if kids else ""
        return f'<li class="section" id="item-{_e(number)}">{heading}{body}</li>'


STYLE = """
:root{color-scheme:light dark}
body{font:15px/1.45 system-ui,sans-serif;margin:0;padding:1.2rem 1.6rem;max-width:60rem;
background:Canvas;color:CanvasText}
h1{font-size:1.4rem;margin:.2rem 0 .8rem}
h2,h3,h4,h5,h6{font-size:1.05rem;margin:.9rem 0 .3rem}
dl.header{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0 0 1rem}
dl.header dt{font-weight:600}
dl.header dd{margin:0}
ul.tree{list-style:none;padding-left:1.1rem;margin:.2rem 0}
ul.root{padding-left:0}
li.item{margin:.15rem 0}
li.obs{opacity:.8;font-size:.93em}
.concept{font-weight:600}
.text{white-space:pre-wrap}
.uid{font-family:monospace;font-size:.92em}
.rel,.muted{opacity:.65;font-size:.88em}
.status{display:inline-block;padding:.05rem .45rem;border:1px solid;border-radius:.3rem;
font-size:.85em;margin-right:.4rem}
"""

#: the report page runs no script and loads nothing (PS3.3 content is data, never markup)
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'"
)


def _observer(seq_item: Dataset) -> str:
    name = seq_item.get("VerifyingObserverName") or seq_item.get("PersonName")
    org = seq_item.get("VerifyingOrganization") or seq_item.get("InstitutionName")
    when = seq_item.get("VerificationDateTime")
    parts = [_pname(name)] if name else []
    if org:
        parts.append(str(org))
    if when:
        parts.append(_datetime(when))
    return ", ".join(parts)


def render_report(ds: Dataset) -> str:
    """The SR document ``ds`` as a self-contained HTML page (escaped; no script, no link).
    Raises NotAReport when ``ds`` has no SR content tree."""
    if not is_report(ds):
        raise NotAReport("the instance is not a Structured Report (no root CONTAINER)")
    title = _code(_first(ds, "ConceptNameCodeSequence")) or "Structured Report"
    plain_title = str(getattr(_first(ds, "ConceptNameCodeSequence"), "CodeMeaning", "") or "")
    rows: list[tuple[str, str]] = []

    def add(label: str, value: str) -> None:
        if value:
            rows.append((label, value))

    add("Patient", _e(_pname(ds.get("PatientName"))))
    add("Patient ID", _e(ds.get("PatientID", "") or ""))
    add("Birth date", _e(_date(ds.get("PatientBirthDate"))))
    add("Sex", _e(ds.get("PatientSex", "") or ""))
    study_when = " ".join(x for x in (_date(ds.get("StudyDate")), _time(ds.get("StudyTime"))) if x)
    add(
        "Study",
        _e(" — ".join(x for x in (study_when, str(ds.get("StudyDescription", "") or "")) if x)),
    )
    add("Accession", _e(ds.get("AccessionNumber", "") or ""))
    add("Referring physician", _e(_pname(ds.get("ReferringPhysicianName"))))
    content_when = " ".join(
        x for x in (_date(ds.get("ContentDate")), _time(ds.get("ContentTime"))) if x
    )
    add("Content date", _e(content_when))
    status = []
    completion = str(ds.get("CompletionFlag", "") or "")
    verification = str(ds.get("VerificationFlag", "") or "")
    preliminary = str(ds.get("PreliminaryFlag", "") or "")
    for flag in (completion, verification, preliminary):
        if flag:
            status.append(f'<span class="status">{_e(flag)}</span>')
    add("Status", "".join(status))
    if ds.get("CompletionFlagDescription"):
        add("Completion note", _e(ds.CompletionFlagDescription))
    for observer in ds.get("VerifyingObserverSequence", []) or []:
        add("Verified by", _e(_observer(observer)))
    for author in ds.get("AuthorObserverSequence", []) or []:
        name = author.get("PersonName")
        org = author.get("InstitutionName")
        add("Author", _e(", ".join(x for x in (_pname(name) if name else "", str(org or "")) if x)))
    for participant in ds.get("ParticipantSequence", []) or []:
        role = str(participant.get("ParticipationType", "") or "").lower()
        name = participant.get("PersonName")
        if name:
            add(f"Participant ({role})" if role else "Participant", _e(_pname(name)))
    add("Manufacturer", _e(ds.get("Manufacturer", "") or ""))

    renderer = _Renderer()
    kids = renderer.children(ds, 0, "1")
    tail = (
        f'<p class="muted">({renderer.cut} more content items not shown)</p>'
        if renderer.cut
        else ""
    )
    header = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(plain_title or 'Structured Report')}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>"
        f'<h1 class="title">{title}</h1><dl class="header">{header}</dl>'
        f'<ul class="tree root">{"".join(kids)}</ul>{tail}</body></html>'
    )
