"""Non-DICOM files → DICOM objects (SPEC S1): photos, scans, PDFs and videos.

IODs written (PS3.3 Annex A) and their modules:

* Secondary Capture Image (§A.8.1) — Patient, General Study, General Series, General
  Equipment, SC Equipment, General Image, Image Pixel, SC Image, SOP Common.
* Multi-frame True Color SC Image (§A.8.5) — plus Cine/Multi-frame, SC Multi-frame Image
  (Frame Increment Pointer → Page Number Vector for TIFF pages).
* VL Endoscopic / VL Photographic Image (§A.32.1 / §A.32.4) — plus Acquisition Context and
  VL Image (Image Type, Anatomic Region Sequence).
* Video Endoscopic / Video Photographic Image (§A.32.5 / §A.32.7) — plus Cine and Multi-frame
  (Frame Increment Pointer → Frame Time), pixel data in an MPEG-2 / H.264 transfer syntax.
* Encapsulated PDF (§A.45.1) — Encapsulated Document Series, SC Equipment, Encapsulated
  Document (the PDF bytes unchanged, EncapsulatedDocumentLength = the file's size).

Pixel data: JPEG files are encapsulated unchanged as JPEG Baseline (PS3.5 §8.2.1, §A.4:
one fragment per frame, the JPEG stream byte for byte); a progressive or extended-sequential
8-bit JPEG is decoded and re-encoded as baseline (recorded as a derived, lossy image); 12-bit,
lossless and arithmetic-coded JPEGs are refused with a clear error. PNG / BMP / GIF / TIFF go
native in Explicit VR Little Endian (PS3.5 §A.2), or JPEG Baseline on request.

UIDs (PS3.5 §9): one Study Instance UID per :class:`Converter` (a batch = one patient
visit) unless the patient data names one; one series per (SOP class, modality) in the batch;
Instance Numbers count up in each series in the order the files come. Content Date/Time come
from the photo's EXIF DateTimeOriginal when it has one, else from the file's modification
time; Study Date/Time from the patient data, else the batch's start.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsbox.sendtopacs.jpeg import JPEGError, read_jpeg_info
from pacsbox.sendtopacs.patient import PatientInfo
from pacsbox.sendtopacs.sopclasses import (
    ENCAPSULATED_PDF,
    EXPLICIT_LE,
    JPEG_BASELINE,
    KNOWN,
    MULTIFRAME_TRUE_COLOR_SC,
    SECONDARY_CAPTURE,
    VIDEO_ENDOSCOPIC,
    SopClassEntry,
    content_of,
    default_table,
    file_kind,
    is_uid,
    resolve,
)


class ConvertError(ValueError):
    """A file cannot be converted; the message says why."""


#: Character sets a device or the settings may name (PS3.3 §C.12.1.1.2, single-byte and UTF-8).
CHARACTER_SETS = (
    "ISO_IR 6",
    "ISO_IR 100",
    "ISO_IR 101",
    "ISO_IR 109",
    "ISO_IR 110",
    "ISO_IR 144",
    "ISO_IR 127",
    "ISO_IR 126",
    "ISO_IR 138",
    "ISO_IR 148",
    "ISO_IR 13",
    "ISO_IR 166",
    "ISO_IR 192",
    "GB18030",
    "GBK",
)


@dataclass
class ConvertOptions:
    """How to convert (the "Non-DICOM" settings, SPEC S4)."""

    table: list[SopClassEntry] = field(default_factory=default_table)
    sop_class: str = ""  #: forces this SOP class for every file (else the table decides)
    modality: str = ""  #: forces the modality (else the IOD's, else ``default_modality``)
    default_modality: str = "OT"
    institution_name: str = ""
    station_name: str = ""
    character_set: str = ""  #: "" → ASCII, or ISO_IR 192 when a value needs it
    additional_tag: str = ""  #: e.g. "(0020,4000)" or "ImageComments"
    additional_value: str = ""
    image_encoding: str = "native"  #: native | jpeg (PNG/BMP/GIF/TIFF)
    jpeg_quality: int = 90
    #: decode each JPEG at 1/8 scale before encapsulating it, so a truncated/corrupt file is
    #: refused instead of stored (~70 ms per 12-MP photo; the stream is still not re-encoded)
    verify_jpeg: bool = True
    tiff_split: bool = False  #: one object per TIFF page even when the class is multi-frame
    video_format: str = "auto"  #: auto | mpeg2-mpml | mpeg2-mphl | h264-hp41 | h264-bd | h264-hp42
    video_fallback: str = "h264-hp41"  #: what "auto" transcodes to
    series_description: str = ""
    anatomic_region: tuple[str, str, str] = ("38266002", "SCT", "Entire body")
    manufacturer: str = "pacsbox"

    def validate(self) -> ConvertOptions:
        errors = []
        if self.sop_class and not is_uid(self.sop_class):
            errors.append(f"SOP class {self.sop_class!r} is not a valid UID")
        for name in ("modality", "default_modality"):
            value = getattr(self, name)
            if value and (
                len(value) > 16 or not value.replace("_", "").isalnum() or value.upper() != value
            ):
                errors.append(f"{name} {value!r}: upper-case letters/digits, at most 16 (CS)")
        if self.character_set and self.character_set not in CHARACTER_SETS:
            errors.append(
                f"character set {self.character_set!r}: one of {', '.join(CHARACTER_SETS)}"
            )
        if self.image_encoding not in ("native", "jpeg"):
            errors.append("image encoding: native or jpeg")
        if not 1 <= self.jpeg_quality <= 100:
            errors.append("jpeg quality: 1..100")
        if len(self.institution_name) > 64 or len(self.station_name) > 16:
            errors.append("institution name ≤ 64 characters, station name ≤ 16")
        if self.additional_tag:
            try:
                additional_tag(self.additional_tag)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ConvertError("; ".join(errors))
        return self


def additional_tag(text: str) -> tuple[int, str]:
    """``(gggg,eeee)``, ``gggg,eeee``, ``ggggeeee`` or a keyword → (tag, VR)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    name = text.strip()
    tag = tag_for_keyword(name)
    if tag is None:
        hexpart = name.strip("()").replace(",", "").replace(" ", "")
        try:
            tag = int(hexpart, 16) if len(hexpart) == 8 else None
        except ValueError:
            tag = None
    if tag is None:
        raise ValueError(f"additional info tag {text!r}: a keyword or (gggg,eeee)")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = "LO"
    if vr not in ("LO", "LT", "SH", "ST", "UT", "CS", "UC"):
        raise ValueError(f"additional info tag {text!r}: VR {vr} cannot hold free text")
    if tag >> 16 in (0x0002, 0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0) and tag != 0x00204000:
        # identifying / structural groups other than Image Comments stay under our control
        raise ValueError(f"additional info tag {text!r}: not an attribute we let presets set")
    return int(tag), vr


@dataclass
class Converted:
    """One object made from a file."""

    source: Path
    dataset: Dataset
    note: str = ""  #: e.g. "remuxed H.264", "re-encoded progressive JPEG"

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.sop_instance_uid}.dcm"
        tmp = target.with_name(f".{target.name}.tmp")
        self.dataset.save_as(tmp, enforce_file_format=True)
        tmp.replace(target)
        return target


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def _exif_datetime(img: object) -> dt.datetime | None:
    """EXIF DateTimeOriginal (0x9003 in the Exif IFD), else DateTime (0x0132)."""
    try:
        exif = img.getexif()  # type: ignore[attr-defined]
        value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        if not value:
            return None
        return dt.datetime.strptime(str(value).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except Exception:
        return None


class Converter:
    """Converts the files of one batch (one patient visit) into DICOM objects."""

    def __init__(self, patient: PatientInfo, options: ConvertOptions | None = None) -> None:
        self.patient = patient.validate()
        self.options = (options or ConvertOptions()).validate()
        self.started = _now()
        self.study_uid = patient.study_instance_uid or generate_uid()
        self._series: dict[tuple[str, str], tuple[str, int]] = {}
        self._instances: dict[str, int] = {}

    # -- public ----------------------------------------------------------------------------
    def convert(self, path: Path) -> list[Converted]:
        """The object(s) for one file (a TIFF may give one per page)."""
        path = Path(path)
        kind = file_kind(path.suffix) or self._sniff(path)
        if kind is None:
            raise ConvertError(f"{path.name}: unknown file type {path.suffix or '(none)'}")
        sop_class = self.options.sop_class or resolve(self.options.table, path.suffix, kind)
        content = content_of(sop_class, kind)
        try:
            if kind == "pdf":
                if content != "pdf":
                    raise ConvertError(f"{path.name}: a PDF needs the Encapsulated PDF class")
                return [self._pdf(path, sop_class)]
            if kind == "video":
                if content != "video":
                    raise ConvertError(
                        f"{path.name}: a video needs a video SOP class, not {sop_class}"
                    )
                return [self._video(path, sop_class)]
            if content not in ("image", "multiframe"):
                raise ConvertError(f"{path.name}: SOP class {sop_class} cannot hold an image")
            return self._image(path, sop_class, content)
        except (JPEGError, OSError, ValueError) as exc:
            if isinstance(exc, ConvertError):
                raise
            raise ConvertError(f"{path.name}: {exc}") from exc

    def convert_all(self, paths: Iterable[Path]) -> list[Converted]:
        out: list[Converted] = []
        for path in paths:
            out.extend(self.convert(path))
        return out

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _sniff(path: Path) -> str | None:
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head.startswith(b"%PDF-"):
            return "pdf"
        if (
            head[:3] == b"\xff\xd8\xff"
            or head.startswith((b"\x89PNG", b"GIF8", b"BM"))
            or head[:4] in (b"II*\x00", b"MM\x00*")
        ):
            return "image"
        return None

    def _modality(self, sop_class: str) -> str:
        if self.options.modality:
            return self.options.modality
        info = KNOWN.get(sop_class)
        if info and info.modality:
            return info.modality
        return self.options.default_modality or "OT"

    def _base(self, sop_class: str, content_dt: dt.datetime, transfer_syntax: str) -> Dataset:
        """Patient, General Study, General Series, General Equipment, SOP Common (and the
        file meta, PS3.10 §7.1) — the modules every IOD here has."""
        o, p = self.options, self.patient
        modality = self._modality(sop_class)
        key = (sop_class, modality)
        if key not in self._series:
            self._series[key] = (generate_uid(), len(self._series) + 1)
        series_uid, series_number = self._series[key]
        number = self._instances.get(series_uid, 0) + 1
        self._instances[series_uid] = number

        ds = Dataset()
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        meta.SourceApplicationEntityTitle = "SENDTOPACS"
        ds.file_meta = meta

        values = [
            p.patient_name,
            p.patient_id,
            p.study_description,
            p.referring_physician,
            o.institution_name,
            o.station_name,
            o.additional_value,
            o.series_description,
            p.accession_number,
        ]
        charset = o.character_set or ("" if all(v.isascii() for v in values) else "ISO_IR 192")
        if charset and charset != "ISO_IR 6":
            ds.SpecificCharacterSet = charset
            codec = _python_codec(charset)
            for v in values:
                try:
                    v.encode(codec)
                except UnicodeEncodeError as exc:
                    raise ConvertError(
                        f"{v!r} cannot be written in character set {charset}"
                    ) from exc
        ds.SOPClassUID = UID(sop_class)
        ds.SOPInstanceUID = UID(sop_uid)
        now = self.started
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.TimezoneOffsetFromUTC = now.strftime("%z")
        # Patient (C.7.1.1)
        ds.PatientName = p.patient_name
        ds.PatientID = p.patient_id
        if p.issuer_of_patient_id:
            ds.IssuerOfPatientID = p.issuer_of_patient_id
        ds.PatientBirthDate = p.birth_date
        ds.PatientSex = p.sex
        # General Study (C.7.2.1)
        ds.StudyInstanceUID = UID(self.study_uid)
        ds.StudyDate = p.study_date or now.strftime("%Y%m%d")
        ds.StudyTime = p.study_time or now.strftime("%H%M%S")
        ds.ReferringPhysicianName = p.referring_physician
        ds.StudyID = p.study_id
        ds.AccessionNumber = p.accession_number
        if p.study_description:
            ds.StudyDescription = p.study_description
        # General Series (C.7.3.1)
        ds.Modality = modality
        ds.SeriesInstanceUID = UID(series_uid)
        ds.SeriesNumber = series_number
        ds.SeriesDate = now.strftime("%Y%m%d")
        ds.SeriesTime = now.strftime("%H%M%S")
        if o.series_description:
            ds.SeriesDescription = o.series_description
        # General Equipment (C.7.5.1)
        ds.Manufacturer = o.manufacturer
        if o.institution_name:
            ds.InstitutionName = o.institution_name
        if o.station_name:
            ds.StationName = o.station_name
        ds.SoftwareVersions = IMPLEMENTATION_VERSION_NAME
        ds.InstanceNumber = number
        ds.ContentDate = content_dt.strftime("%Y%m%d")
        ds.ContentTime = content_dt.strftime("%H%M%S")
        if o.additional_tag and o.additional_value:
            tag, vr = additional_tag(o.additional_tag)
            ds.add_new(tag, vr, o.additional_value)
        return ds

    def _sc_equipment(self, ds: Dataset, conversion: str) -> None:
        """SC Equipment (C.8.6.1): Conversion Type DI digitized image / SD scanned document /
        DV digitized video / WSD workstation."""
        ds.ConversionType = conversion

    def _vl(self, ds: Dataset, content_dt: dt.datetime, video: bool) -> None:
        """VL Image (C.8.12.1) and Acquisition Context (C.7.6.14) for the VL IODs."""
        ds.ImageType = (
            ["DERIVED", "SECONDARY"]
            if ds.get("LossyImageCompression") == "01" and ds.get("DerivationDescription")
            else ["ORIGINAL", "PRIMARY"]
        )
        ds.AcquisitionDateTime = content_dt.strftime("%Y%m%d%H%M%S")
        ds.AcquisitionContextSequence = Sequence()
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = (
            self.options.anatomic_region
        )
        ds.AnatomicRegionSequence = Sequence([region])
        if "LossyImageCompression" not in ds:
            ds.LossyImageCompression = "00"
        if video:
            ds.ImageType = ["ORIGINAL", "PRIMARY"]

    # -- images ----------------------------------------------------------------------------
    def _image(self, path: Path, sop_class: str, content: str) -> list[Converted]:
        from PIL import Image, ImageSequence

        data = path.read_bytes()
        mtime = dt.datetime.fromtimestamp(os.stat(path).st_mtime)
        if data[:2] == b"\xff\xd8":
            info = read_jpeg_info(data)
            if info.precision != 8 or info.sof in (0xC3, 0xC7, 0xCB, 0xCF):
                raise ConvertError(
                    f"{path.name}: {info.precision}-bit {info.process} JPEG cannot be stored as "
                    "JPEG Baseline without loss; convert it to an 8-bit baseline JPEG or PNG first"
                )
        try:
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG" and not self.options.verify_jpeg:
                return [
                    self._jpeg(path, data, img, sop_class, content, _exif_datetime(img) or mtime)
                ]
            if img.format == "JPEG":
                # check that the stream decodes, at 1/8 scale (DCT scaling: every entropy-coded
                # block is still read) — about 10x cheaper than a full decode
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        except Exception as exc:
            raise ConvertError(f"{path.name}: not a readable image ({exc})") from exc
        content_dt = _exif_datetime(img) or mtime
        if img.format == "JPEG":
            return [self._jpeg(path, data, img, sop_class, content, content_dt)]
        pages = [p.copy() for p in ImageSequence.Iterator(img)]
        if img.format == "GIF":
            pages = pages[:1]  # an animated GIF: the first picture (decided: no GIF video)
        if (
            content == "multiframe"
            and not self.options.tiff_split
            and len(pages) > 1
            and len({p.size for p in pages}) == 1
        ):
            return [self._pixels(path, pages, sop_class, content, content_dt)]
        return [self._pixels(path, [p], sop_class, content, content_dt) for p in pages]

    def _jpeg(
        self,
        path: Path,
        data: bytes,
        img: object,
        sop_class: str,
        content: str,
        content_dt: dt.datetime,
    ) -> Converted:
        info = read_jpeg_info(data)
        if not info.baseline:
            # progressive / extended / CMYK 8-bit: decode (full size, not the 1/8 check
            # decode) and re-encode as baseline
            from PIL import Image

            full = Image.open(io.BytesIO(data))
            full.load()
            return self._pixels(
                path,
                [full],
                sop_class,
                content,
                content_dt,
                force_jpeg=True,
                derivation=f"re-encoded from a {info.process} JPEG to baseline",
            )
        stream = data[: data.rfind(b"\xff\xd9") + 2] if data.rfind(b"\xff\xd9") > 0 else data
        ds = self._base(sop_class, content_dt, JPEG_BASELINE)
        self._pixel_module(ds, info.rows, info.columns, info.components, info.photometric, frames=1)
        ds.LossyImageCompression = "01"
        ratio = info.rows * info.columns * info.components / max(1, len(stream))
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        self._image_iod(ds, sop_class, content, content_dt, "DI", frames=1)
        ds.PixelData = encapsulate([stream])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True  # encapsulated (PS3.5 §A.4)
        return Converted(path, ds, "JPEG stream encapsulated unchanged")

    def _pixel_module(
        self,
        ds: Dataset,
        rows: int,
        cols: int,
        samples: int,
        photometric: str,
        frames: int,
        bits: int = 8,
    ) -> None:
        """Image Pixel (C.7.6.3)."""
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = photometric
        if samples > 1:
            ds.PlanarConfiguration = 0
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        if frames > 1 or ds.SOPClassUID == MULTIFRAME_TRUE_COLOR_SC:
            ds.NumberOfFrames = frames

    def _image_iod(
        self,
        ds: Dataset,
        sop_class: str,
        content: str,
        content_dt: dt.datetime,
        conversion: str,
        frames: int,
    ) -> None:
        """The IOD-specific modules for a still image."""
        ds.PatientOrientation = ""
        ds.BurnedInAnnotation = "NO"
        info = KNOWN.get(sop_class)
        if info is not None and info.modality in ("ES", "XC") and content == "image":
            self._vl(ds, content_dt, video=False)
            return
        self._sc_equipment(ds, conversion)
        ds.Laterality = ""  # General Series, type 2C: unknown for a converted picture
        ds.DateOfSecondaryCapture = self.started.strftime("%Y%m%d")
        ds.TimeOfSecondaryCapture = self.started.strftime("%H%M%S")
        if content == "multiframe":
            # SC Multi-frame Image (C.8.6.3) + Multi-frame (C.7.6.6)
            ds.FrameIncrementPointer = 0x00182001  # Page Number Vector
            ds.PageNumberVector = list(range(1, frames + 1))

    def _pixels(
        self,
        path: Path,
        pages: list,
        sop_class: str,
        content: str,
        content_dt: dt.datetime,
        *,
        force_jpeg: bool = False,
        derivation: str = "",
    ) -> Converted:
        """Decoded pictures → native pixel data (or JPEG Baseline by option)."""
        import numpy as np

        as_jpeg = force_jpeg or self.options.image_encoding == "jpeg"
        grey = content != "multiframe" and all(
            p.mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F") for p in pages
        )
        sixteen = (
            grey and not as_jpeg and any(p.mode.startswith("I") or p.mode == "F" for p in pages)
        )
        frames_out: list[np.ndarray] = []
        for page in pages:
            if grey and sixteen:
                arr = np.asarray(page.convert("I"), dtype=np.int64)
                frames_out.append(np.clip(arr, 0, 65535).astype("<u2"))
            elif grey:
                frames_out.append(np.asarray(page.convert("L"), dtype=np.uint8))
            else:
                if page.mode in ("RGBA", "LA", "PA") or (
                    page.mode == "P" and "transparency" in page.info
                ):
                    from PIL import Image

                    bg = Image.new("RGBA", page.size, (0, 0, 0, 255))
                    page = Image.alpha_composite(bg, page.convert("RGBA"))
                frames_out.append(np.asarray(page.convert("RGB"), dtype=np.uint8))
        rows, cols = frames_out[0].shape[:2]
        samples = 1 if grey else 3
        n = len(frames_out)
        if as_jpeg:
            from PIL import Image

            streams = []
            for arr in frames_out:
                buf = io.BytesIO()
                Image.fromarray(arr).save(
                    buf,
                    "JPEG",
                    quality=self.options.jpeg_quality,
                    subsampling=2,
                    optimize=False,
                    progressive=False,
                )
                streams.append(buf.getvalue())
            ds = self._base(sop_class, content_dt, JPEG_BASELINE)
            self._pixel_module(
                ds, rows, cols, samples, "YBR_FULL_422" if samples == 3 else "MONOCHROME2", n
            )
            ds.LossyImageCompression = "01"
            ratio = rows * cols * samples * n / max(1, sum(len(s) for s in streams))
            ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
            ds.LossyImageCompressionMethod = "ISO_10918_1"
            if derivation:
                ds.DerivationDescription = derivation
            self._image_iod(ds, sop_class, content, content_dt, "DI", n)
            ds.PixelData = encapsulate(streams)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True  # encapsulated (PS3.5 §A.4)
            note = derivation or "JPEG Baseline encoded"
        else:
            bits = 16 if sixteen else 8
            ds = self._base(sop_class, content_dt, EXPLICIT_LE)
            self._pixel_module(ds, rows, cols, samples, "MONOCHROME2" if grey else "RGB", n, bits)
            self._image_iod(ds, sop_class, content, content_dt, "DI", n)
            raw = b"".join(a.tobytes() for a in frames_out)
            if len(raw) % 2:
                raw += b"\x00"
            ds.PixelData = raw
            ds["PixelData"].VR = "OW" if bits == 16 else "OB"
            note = "native pixels"
        if ds.SOPClassUID == SECONDARY_CAPTURE and n > 1:
            raise ConvertError(f"{path.name}: Secondary Capture holds one frame")
        return Converted(path, ds, note)

    # -- PDF -------------------------------------------------------------------------------
    def _pdf(self, path: Path, sop_class: str) -> Converted:
        """Encapsulated PDF (PS3.3 §A.45.1, §C.24.2): the document bytes unchanged."""
        data = path.read_bytes()
        if not data.startswith(b"%PDF-"):
            raise ConvertError(f"{path.name}: not a PDF (no %PDF- header)")
        if len(data) > 0xFFFFFFFE - 1:
            raise ConvertError(f"{path.name}: too large for one OB element")
        mtime = dt.datetime.fromtimestamp(os.stat(path).st_mtime)
        ds = self._base(sop_class, mtime, EXPLICIT_LE)
        self._sc_equipment(ds, "SD")
        ds.BurnedInAnnotation = "YES"
        ds.DocumentTitle = path.stem[:64]
        ds.ConceptNameCodeSequence = Sequence()
        ds.AcquisitionDateTime = mtime.strftime("%Y%m%d%H%M%S")
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocumentLength = len(data)
        ds.EncapsulatedDocument = data + (b"\x00" if len(data) % 2 else b"")
        return Converted(path, ds, "PDF encapsulated unchanged")

    # -- video -----------------------------------------------------------------------------
    def _video(self, path: Path, sop_class: str) -> Converted:
        from pacsbox.sendtopacs.video import VideoError, convert_video

        try:
            stream = convert_video(path, self.options.video_format, self.options.video_fallback)
        except VideoError as exc:
            raise ConvertError(str(exc)) from exc
        mtime = dt.datetime.fromtimestamp(os.stat(path).st_mtime)
        ds = self._base(sop_class, mtime, stream.transfer_syntax)
        self._pixel_module(
            ds, stream.height, stream.width, 3, "YBR_PARTIAL_420", frames=max(2, stream.frames)
        )
        ds.NumberOfFrames = stream.frames
        # Cine (C.7.6.5) and Multi-frame (C.7.6.6)
        frame_time = 1000 / float(stream.fps)
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = f"{frame_time:.6g}"
        ds.CineRate = round(float(stream.fps))
        ds.RecommendedDisplayFrameRate = round(float(stream.fps))
        ds.StartTrim = 1
        ds.StopTrim = stream.frames
        ds.ActualFrameDuration = round(frame_time)
        ds.PreferredPlaybackSequencing = 0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = (
            "ISO_13818_2" if stream.transfer_syntax.endswith((".100", ".101")) else "ISO_14496_10"
        )
        ds.BurnedInAnnotation = "NO"
        ds.PatientOrientation = ""
        self._vl(ds, mtime, video=True)
        data = stream.data + (b"\x00" if len(stream.data) % 2 else b"")
        ds.PixelData = encapsulate([data], has_bot=False)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True  # encapsulated (PS3.5 §A.4)
        how = (
            "remuxed, not re-encoded"
            if stream.remuxed
            else (f"transcoded from {stream.source.codec}")
        )
        return Converted(path, ds, f"{UID(stream.transfer_syntax).name}: {how}")


def _python_codec(charset: str) -> str:
    from pydicom.charset import python_encoding

    return python_encoding.get(charset, "utf-8")


__all__ = [
    "CHARACTER_SETS",
    "ConvertError",
    "ConvertOptions",
    "Converted",
    "Converter",
    "ENCAPSULATED_PDF",
    "VIDEO_ENDOSCOPIC",
]
