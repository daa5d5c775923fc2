"""SOP classes and transfer syntaxes sendtopacs creates (PS3.4 Annex B, PS3.3 Annex A, PS3.5 §8.2;
SPEC S1, S4) and the file-extension → SOP class table of the settings.

Every SOP class carries one kind of *content*: ``image`` (a single-frame image IOD),
``multiframe`` (Multi-frame True Color SC, PS3.3 §A.8.5), ``video`` (VL video IODs, PS3.3
§A.32.5/§A.32.7 with an MPEG-2 / H.264 transfer syntax) or ``pdf`` (Encapsulated PDF, PS3.3
§A.45.1). A SOP class UID the table does not know may be configured: it then carries
Secondary Capture content for images and Encapsulated PDF content for PDFs (as the seed asks).
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
H264_HP41 = "1.2.840.10008.1.2.4.102"
H264_BD = "1.2.840.10008.1.2.4.103"
H264_HP42_2D = "1.2.840.10008.1.2.4.104"

#: Video transfer syntaxes the converter writes, by short name (settings ``video_format``).
VIDEO_FORMATS: dict[str, str] = {
    "mpeg2-mpml": MPEG2_MPML,
    "mpeg2-mphl": MPEG2_MPHL,
    "h264-hp41": H264_HP41,
    "h264-bd": H264_BD,
    "h264-hp42": H264_HP42_2D,
}


@dataclass(frozen=True)
class SopClassInfo:
    uid: str
    name: str
    content: str  #: image | multiframe | video | pdf
    modality: str | None  #: the modality the IOD implies (None: the configured default)


KNOWN: dict[str, SopClassInfo] = {
    i.uid: i
    for i in (
        SopClassInfo(SECONDARY_CAPTURE, "Secondary Capture Image Storage", "image", None),
        SopClassInfo(
            MULTIFRAME_TRUE_COLOR_SC,
            "Multi-frame True Color Secondary Capture Image Storage",
            "multiframe",
            None,
        ),
        SopClassInfo(VL_ENDOSCOPIC, "VL Endoscopic Image Storage", "image", "ES"),
        SopClassInfo(VL_PHOTOGRAPHIC, "VL Photographic Image Storage", "image", "XC"),
        SopClassInfo(VIDEO_ENDOSCOPIC, "Video Endoscopic Image Storage", "video", "ES"),
        SopClassInfo(VIDEO_PHOTOGRAPHIC, "Video Photographic Image Storage", "video", "XC"),
        SopClassInfo(ENCAPSULATED_PDF, "Encapsulated PDF Storage", "pdf", "DOC"),
    )
}

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "jfif", "png", "bmp", "gif", "tif", "tiff"})
VIDEO_EXTENSIONS = frozenset(
    {
        "mp4",
        "m4v",
        "mov",
        "avi",
        "mpg",
        "mpeg",
        "m2v",
        "mkv",
        "wmv",
        "webm",
        "ts",
        "mts",
        "m2ts",
        "h264",
        "264",
        "vob",
        "flv",
        "3gp",
    }
)
PDF_EXTENSIONS = frozenset({"pdf"})


def is_uid(text: str) -> bool:
    """PS3.5 §9.1: digits and dots, no leading zero in a component, at most 64 characters."""
    if not text or len(text) > 64:
        return False
    parts = text.split(".")
    return all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)


@dataclass
class SopClassEntry:
    """One row of the table: a SOP class used for some file extensions (``*`` = every
    non-DICOM file) — ``default`` marks the one used when no row names the extension."""

    uid: str
    name: str = ""
    extensions: tuple[str, ...] = ("*",)
    default: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "uid": self.uid,
            "name": self.name or sop_class_name(self.uid),
            "extensions": list(self.extensions),
            "default": self.default,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SopClassEntry:
        uid = str(data.get("uid", ""))
        if not is_uid(uid):
            raise ValueError(f"SOP class table: {uid!r} is not a valid UID")
        exts = data.get("extensions", ["*"])
        if isinstance(exts, str):
            exts = [e for e in exts.replace(";", ",").split(",")]
        extensions = tuple(str(e).strip().lower().lstrip(".") for e in exts if str(e).strip())
        return cls(uid, str(data.get("name", "")), extensions or ("*",), bool(data.get("default")))


def default_table() -> list[SopClassEntry]:
    """The table a new settings file starts with: SC for every image (default), Multi-frame
    True Color SC for TIFF (multi-page → one multi-frame object), Encapsulated PDF for PDFs,
    Video Photographic for video files, VL/Video Endoscopic available but unused."""
    return [
        SopClassEntry(SECONDARY_CAPTURE, "Secondary Capture Image Storage", ("*",), True),
        SopClassEntry(MULTIFRAME_TRUE_COLOR_SC, "Multi-frame True Color SC", ("tif", "tiff")),
        SopClassEntry(ENCAPSULATED_PDF, "Encapsulated PDF Storage", ("pdf",)),
        SopClassEntry(
            VIDEO_PHOTOGRAPHIC, "Video Photographic Image Storage", tuple(sorted(VIDEO_EXTENSIONS))
        ),
        SopClassEntry(VIDEO_ENDOSCOPIC, "Video Endoscopic Image Storage", ("*",)),
        SopClassEntry(VL_ENDOSCOPIC, "VL Endoscopic Image Storage", ("*",)),
        SopClassEntry(VL_PHOTOGRAPHIC, "VL Photographic Image Storage", ("*",)),
    ]


def sop_class_name(uid: str) -> str:
    info = KNOWN.get(uid)
    return info.name if info else uid


def content_of(uid: str, file_kind: str) -> str:
    """What a SOP class carries for a file of ``file_kind`` (image/pdf/video): its own content
    for a known class, SC (``image``) or ``pdf`` content for a configured unknown UID."""
    info = KNOWN.get(uid)
    if info is not None:
        return info.content
    return "pdf" if file_kind == "pdf" else "image"


def _fits(uid: str, file_kind: str) -> bool:
    content = content_of(uid, file_kind)
    if file_kind == "image":
        return content in ("image", "multiframe")
    if file_kind == "video":
        return content == "video"
    return content == "pdf"


def file_kind(extension: str) -> str | None:
    ext = extension.lower().lstrip(".")
    if ext in PDF_EXTENSIONS:
        return "pdf"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def resolve(table: list[SopClassEntry], extension: str, kind: str) -> str:
    """The SOP class for a file: a row naming its extension; else the default row; else a
    ``*`` row; each only if it can carry the file's kind — else the built-in fallback
    (SC for images, Video Photographic for video, Encapsulated PDF for PDFs)."""
    ext = extension.lower().lstrip(".")
    named = [e for e in table if ext in e.extensions]
    defaults = [e for e in table if e.default]
    stars = [e for e in table if "*" in e.extensions or not e.extensions]
    for entry in (*named, *defaults, *stars):
        if _fits(entry.uid, kind):
            return entry.uid
    return {"image": SECONDARY_CAPTURE, "video": VIDEO_PHOTOGRAPHIC}.get(kind, ENCAPSULATED_PDF)
