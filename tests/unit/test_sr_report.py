"""SR rendering (PS3.3 §C.17.3) and Encapsulated Documents (PS3.3 §C.24.2):
pacsbox.archive.sr_report. The builders here are reused by the integration and e2e tests."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsbox.archive import sr_report
from pacsbox.archive.sr_report import NotAReport, encapsulated_document, render_report

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def content(
    value_type: str, relation: str, concept: Dataset | None = None, **attrs: object
) -> Dataset:
    item = Dataset()
    item.RelationshipType = relation
    item.ValueType = value_type
    if concept is not None:
        item.ConceptNameCodeSequence = Sequence([concept])
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _base(sop_class: str, modality: str, **study: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = study.get("patient_name", "Report^Rita")
    ds.PatientID = study.get("patient_id", "SR0001")
    ds.PatientBirthDate = "19600214"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study.get("study_uid") or generate_uid()
    ds.SeriesInstanceUID = study.get("series_uid") or generate_uid()
    ds.StudyDate, ds.StudyTime = "20260301", "083000"
    ds.AccessionNumber = study.get("accession", "ACCSR1")
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Referrer^Rob"
    ds.Modality = modality
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.Manufacturer = "pacsbox tests"
    ds.ContentDate, ds.ContentTime = "20260301", "091500"
    return ds


def make_sr(text: str = "No acute intracranial abnormality.", **study: str) -> Dataset:
    """A Comprehensive SR with every common value type, nesting, an observer context, a
    by-reference item, verification, and one hostile string in several places."""
    ds = _base(COMPREHENSIVE_SR, "SR", **study)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Smith^Jane^^Dr."
    observer.VerifyingOrganization = "General Hospital"
    observer.VerificationDateTime = "20260301101500"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([])
    ds.VerifyingObserverSequence = Sequence([observer])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ref.ReferencedFrameNumber = 1
    num = Dataset()
    num.NumericValue = "12.5"
    num.MeasurementUnitsCodeSequence = Sequence([code("mm", "UCUM", "millimeter")])
    findings = content(
        "CONTAINER",
        "CONTAINS",
        code("121070", "DCM", "Findings"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence(
            [
                content("TEXT", "CONTAINS", code("121071", "DCM", "Finding"), TextValue=text),
                content(
                    "CODE",
                    "CONTAINS",
                    code("G-C0E3", "SRT", "Finding site"),
                    ConceptCodeSequence=Sequence([code("T-A0100", "SRT", "Brain")]),
                ),
                content(
                    "NUM",
                    "CONTAINS",
                    code("G-D7FE", "SRT", "Lesion diameter"),
                    MeasuredValueSequence=Sequence([num]),
                    ContentSequence=Sequence(
                        [content("IMAGE", "INFERRED FROM", ReferencedSOPSequence=Sequence([ref]))]
                    ),
                ),
                content("TEXT", "CONTAINS", code("121106", "DCM", HOSTILE), TextValue=HOSTILE),
                content("DATE", "CONTAINS", code("111060", "DCM", "Study Date"), Date="20260228"),
                content(
                    "UIDREF",
                    "CONTAINS",
                    code("110180", "DCM", "Study Instance UID"),
                    UID="1.2.840.99999.1",
                ),
            ]
        ),
    )
    by_reference = Dataset()
    by_reference.RelationshipType = "HAS PROPERTIES"
    by_reference.ReferencedContentItemIdentifier = [1, 2, 1]
    impression = content(
        "CONTAINER",
        "CONTAINS",
        code("121072", "DCM", "Impressions"),
        ContinuityOfContent="CONTINUOUS",
        ContentSequence=Sequence(
            [
                content(
                    "TEXT", "CONTAINS", code("121073", "DCM", "Impression"), TextValue="Normal"
                ),
                content(
                    "TEXT", "CONTAINS", code("121073", "DCM", "Impression"), TextValue="study."
                ),
            ]
        ),
    )
    ds.ContentSequence = Sequence(
        [
            content(
                "PNAME",
                "HAS OBS CONTEXT",
                code("121008", "DCM", "Person Observer Name"),
                PersonName="Smith^Jane",
            ),
            findings,
            impression,
            by_reference,
        ]
    )
    return ds


def minimal_pdf(text: str = "pacsbox test PDF", padding: int = 0) -> bytes:
    """A valid one-page PDF (PDF 1.4) showing ``text`` (xref offsets computed); ``padding``
    bytes of comment lines make it bigger."""
    stream = f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    for _ in range(padding // 80):
        out += b"%" + b"p" * 78 + b"\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_pdf(data: bytes | None = None, mime: str = "application/pdf", **study: str) -> Dataset:
    """Encapsulated PDF Storage (PS3.3 §A.45.1) holding ``data`` (odd length padded)."""
    data = minimal_pdf() if data is None else data
    ds = _base(ENCAPSULATED_PDF, "DOC", **study)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Referral letter"
    ds.ConceptNameCodeSequence = Sequence([])
    ds.MIMETypeOfEncapsulatedDocument = mime
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    return ds


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


def test_report_shows_every_value_type_in_order() -> None:
    page = render_report(make_sr())
    text = " ".join("".join(parse(page).text).split())
    for expected in (
        "Diagnostic Imaging Report",
        "Rita Report",
        "SR0001",
        "1960-02-14",
        "2026-03-01 08:30:00",
        "ACCSR1",
        "COMPLETE",
        "VERIFIED",
        "Dr. Jane Smith, General Hospital, 2026-03-01 10:15:00",
        "Person Observer Name: Jane Smith",
        "Findings",
        "Finding: No acute intracranial abnormality.",
        "Finding site: Brain",
        "Lesion diameter: 12.5 mm",
        "1.2.3.4.5.6.7",
        "CT Image Storage",
        "frame 1",
        "Study Date: 2026-02-28",
        "1.2.840.99999.1",
        "Normal study.",  # CONTINUOUS text joined into one paragraph
        "see item 1.2.1",
    ):
        assert expected in text, (expected, text)
    assert text.index("Findings") < text.index("Finding site") < text.index("Impressions")
    # sections are headings by depth; codes carry scheme + value in their title
    assert "<h2" in page and 'title="LN 18748-4"' in page
    assert 'title="millimeter"' in page  # UCUM unit shows its code, meaning as a tip


def test_report_escapes_everything() -> None:
    page = render_report(make_sr(text=HOSTILE))
    parsed = parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert not any(name.startswith("on") for name, _ in parsed.attrs)
    assert HOSTILE in "".join(parsed.text)  # shown as text, verbatim
    assert "&lt;script&gt;" in page


def test_report_deep_and_wide_trees_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_sr()
    node = ds
    for i in range(sr_report.MAX_DEPTH + 10):
        child = content("CONTAINER", "CONTAINS", code(str(i), "99T", f"level {i}"))
        node.ContentSequence = Sequence([child])
        node = child
    page = render_report(ds)
    assert "nesting too deep" in page
    assert "level 3" in page and f"level {sr_report.MAX_DEPTH + 5}" not in page
    monkeypatch.setattr(sr_report, "MAX_ITEMS", 5)
    wide = make_sr()
    wide.ContentSequence = Sequence(
        [content("TEXT", "CONTAINS", TextValue=f"line {i}") for i in range(12)]
    )
    page = render_report(wide)
    assert "line 4" in page and "line 5" not in page
    assert "7 more content items not shown" in page


def test_not_a_report() -> None:
    with pytest.raises(NotAReport):
        render_report(make_pdf())
    # a NUM without a value shows its qualifier (PS3.3 §C.18.1)
    ds = make_sr()
    ds.ContentSequence = Sequence(
        [
            content(
                "NUM",
                "CONTAINS",
                code("1", "99T", "Volume"),
                MeasuredValueSequence=Sequence([]),
                NumericValueQualifierCodeSequence=Sequence(
                    [code("114006", "DCM", "Measurement failure")]
                ),
            )
        ]
    )
    text = "".join(parse(render_report(ds)).text)
    assert "Volume: Measurement failure" in text


def test_encapsulated_pdf_trimmed_to_its_length() -> None:
    pdf = minimal_pdf("odd") + b"x"  # odd length: padded in the data set
    assert len(pdf) % 2
    doc = encapsulated_document(make_pdf(pdf))
    assert doc.data == pdf and doc.mime == "application/pdf" and doc.inline
    assert doc.title == "Referral letter"
    assert not doc.data.endswith(b"\0")  # the pad byte is not part of the document
    even = minimal_pdf()
    assert encapsulated_document(make_pdf(even)).data == even
    # the xref offset points at the xref table (a PDF reader can open it)
    assert even[int(re.search(rb"startxref\n(\d+)", even).group(1)) :].startswith(b"xref")


@pytest.mark.parametrize(
    ("mime", "shown", "inline"),
    [
        ("text/html", "text/html", False),
        ("TEXT/XML", "text/xml", False),
        ("image/svg+xml", "image/svg+xml", False),
        ("text/html\r\nX-Evil: 1", "application/octet-stream", False),
        ("", "application/octet-stream", False),
        ("model/stl", "model/stl", True),
    ],
)
def test_document_mime_is_validated(mime: str, shown: str, inline: bool) -> None:
    doc = encapsulated_document(make_pdf(b"data", mime=mime))
    assert (doc.mime, doc.inline) == (shown, inline)


def test_no_document() -> None:
    with pytest.raises(NotAReport, match="Encapsulated Document"):
        encapsulated_document(make_sr())


@pytest.mark.parametrize("fmt", ["part10", "native"])
@pytest.mark.parametrize(
    "ts", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]
)
def test_read_stored_formats(tmp_path: Path, fmt: str, ts: str) -> None:
    """Stored files are Part-10 or bare data sets in the stored transfer syntax (deflate
    included): both read back to the same report."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = make_sr()
    ds.PixelData = b"\x01" * 4096  # not read when stopping before pixels
    ds["PixelData"].VR = "OB"
    path = tmp_path / "sr.dcm"
    if fmt == "part10":
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(path, enforce_file_format=True)
    else:
        out = DicomBytesIO()
        out.is_implicit_VR = ts == "1.2.840.10008.1.2"
        out.is_little_endian = True
        bare = ds.copy()
        del bare.file_meta
        write_dataset(out, bare)
        raw = out.getvalue()
        if ts.endswith(".99"):
            comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            raw = comp.compress(raw) + comp.flush()
        path.write_bytes(raw)
    item = sr_report.StoredInstance(path, ts, fmt, COMPREHENSIVE_SR, "1", "2", "3")
    page = render_report(sr_report.read_stored(item))
    assert "No acute intracranial abnormality." in page and "Lesion diameter" in page
    assert len(sr_report.read_stored(item).PixelData) == 4096
    head = sr_report.read_stored(item, stop_before_pixels=True)
    assert "PixelData" not in head and "Lesion diameter" in render_report(head)


def test_read_stored_garbage(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x08\x00\x05\x00CS\xff\xffjunk")
    item = sr_report.StoredInstance(path, "1.2.840.10008.1.2.1", "native", "", "1", "2", "3")
    with pytest.raises(NotAReport):
        render_report(sr_report.read_stored(item))
