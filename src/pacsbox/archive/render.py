"""Rendering one frame of a stored instance as a consumer-format image (JPEG, PNG, GIF).

One renderer for WADO-RS ``/rendered`` and ``/thumbnail`` (PS3.18 §10.4.1.1.3, §8.3.5),
WADO-URI (PS3.18 §9) and the web UI thumbnails. The grayscale pipeline is the standard one of
PS3.3 §C.11 (and PS3.4 Annex N):

1. **Decode one frame** (PS3.5 §8) with pydicom's decoders and the installed codec plugins,
   reading the file header, then only the requested frame (native data: a seek; encapsulated
   data: pydicom walks the offset tables / fragments of that frame only).
2. **Modality LUT** (PS3.3 §C.11.1): Rescale Slope/Intercept (or the Pixel Value
   Transformation Sequence of the frame's functional groups, §C.7.6.16.2.9), or the Modality
   LUT Sequence.
3. **VOI LUT** (PS3.3 §C.11.2): the window of the request, else the frame's Frame VOI LUT
   Sequence (§C.7.6.16.2.10), else the data set's Window Center/Width (first value), else the
   VOI LUT Sequence (first item), else the frame's own min/max (Pixel Padding Value excluded).
   VOI LUT Function LINEAR, LINEAR_EXACT and SIGMOID per §C.11.2.1.2 and §C.11.2.1.3.
4. **Presentation**: MONOCHROME1 is inverted (§C.7.6.3.1.2), output 8 bits.

Colour images (§C.7.6.3.1.2): RGB as is (Planar Configuration handled by the decoder),
YBR_FULL / YBR_FULL_422 converted to RGB with the §C.7.6.3.1.2 equations (pydicom's
``convert_color_space``) unless the codec already did, YBR_ICT / YBR_RCT come out of the
JPEG 2000 decoder as RGB, PALETTE COLOR through its Palette Color LUTs (§C.7.6.3.1.5,
segmented LUTs included). Samples deeper than 8 bits are scaled down. No window applies to
colour images.

Then a region (WADO-URI ``region``, PS3.18 §9 / §8.3.5.1.3 viewport source region), scaling
to fit a viewport / rows / columns keeping the aspect ratio (never beyond ``MAX_OUTPUT_SIDE``),
and encoding with Pillow. Grayscale frames that are integers are mapped through one lookup
table built over the frame's value range (modality + VOI + presentation folded together), so a
512×512 CT frame costs a few milliseconds. Nothing is cached.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from pacsbox.archive.video import VIDEO_SYNTAXES

#: Largest side of an output image; larger requests are capped (hostile input).
MAX_OUTPUT_SIDE = 4096
#: Widest integer value range mapped through one lookup table (else the float path).
_MAX_LUT_RANGE = 1 << 20
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128

DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_PIXEL_TAGS = {
    (0x7FE0, 0x0010): "PixelData",
    (0x7FE0, 0x0008): "FloatPixelData",
    (0x7FE0, 0x0009): "DoubleFloatPixelData",
}
_COLOR_AS_RGB = frozenset({"RGB", "YBR_ICT", "YBR_RCT"})


class RenderError(ValueError):
    """A rendering parameter is invalid (HTTP 400)."""


class FrameNotFound(RenderError):
    """The frame number is outside 1..Number of Frames (HTTP 400 for a parameter, 404 for a
    ``/frames/{n}`` resource)."""


class NotRenderable(Exception):
    """The object has no pixel data that can be rendered (no Pixel Data, no decoder for its
    transfer syntax, unsupported photometric interpretation): HTTP 406 for image types."""


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 §C.11.2.1.2): center, width and VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in VOI_FUNCTIONS:
            raise RenderError(f"unknown VOI LUT function {self.function!r}")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise RenderError("window center and width must be finite numbers")
        if self.function == "LINEAR" and self.width < 1:
            raise RenderError("window width must be >= 1 for LINEAR")
        if self.width <= 0:
            raise RenderError("window width must be > 0")


@dataclass(frozen=True)
class Region:
    """A source region in pixels: columns ``x .. x+width``, rows ``y .. y+height``; a negative
    width/height flips the image (PS3.18 §8.3.5.1.3)."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class RenderParams:
    """What to render and how. ``frame`` is 1-based. ``size`` fits the output into
    (columns, rows) keeping the aspect ratio; either may be None (only the other bounds it).
    ``fraction`` is a WADO-URI region (xmin, ymin, xmax, ymax in 0..1); ``region`` a pixel
    region (viewport source region); at most one of the two."""

    frame: int = 1
    window: Window | None = None
    size: tuple[int | None, int | None] | None = None
    fraction: tuple[float, float, float, float] | None = None
    region: Region | None = None
    media_type: str = "image/jpeg"
    quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if self.media_type not in MEDIA_TYPES:
            raise RenderError(f"cannot render as {self.media_type!r}")
        if not 1 <= self.quality <= 100:
            raise RenderError("quality must be 1..100")
        if self.frame < 1:
            raise FrameNotFound(f"frame number {self.frame} is not valid (frames start at 1)")


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    media_type: str
    width: int
    height: int


# == parameter parsing (shared by WADO-RS and WADO-URI) =====================================
def parse_number(value: str, what: str) -> float:
    try:
        number = float(value.strip())
    except (ValueError, AttributeError) as exc:
        raise RenderError(f"{what}: {value[:40]!r} is not a number") from exc
    if not math.isfinite(number):
        raise RenderError(f"{what} must be a finite number")
    return number


def parse_positive_int(value: str, what: str, cap: int | None = MAX_OUTPUT_SIDE) -> int:
    """A positive integer parameter; values above ``cap`` are capped."""
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        raise RenderError(f"{what}: {value[:40]!r} is not a positive integer")
    number = int(text)
    if number < 1:
        raise RenderError(f"{what} must be at least 1")
    return min(number, cap) if cap else number


def parse_window(value: str) -> Window:
    """WADO-RS ``window=center,width[,function]`` (PS3.18 §8.3.5.1.4); the function is
    ``linear`` (default), ``linear-exact`` or ``sigmoid`` in any case, ``_`` or ``-``."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise RenderError("window must be center,width[,function]")
    function = "LINEAR"
    if len(parts) == 3 and parts[2]:
        function = parts[2].upper().replace("-", "_")
        if function not in VOI_FUNCTIONS:
            raise RenderError(
                f"window function {parts[2][:30]!r} is not linear, linear-exact or sigmoid"
            )
    return Window(
        parse_number(parts[0], "window center"), parse_number(parts[1], "window width"), function
    )


def parse_viewport(value: str) -> tuple[tuple[int, int], Region | None]:
    """WADO-RS ``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3): the output box, and an
    optional source region in pixels (sx, sy default 0; sw, sh default to the image; negative
    sw/sh flip)."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 6):
        raise RenderError("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    vw = parse_positive_int(parts[0], "viewport width")
    vh = parse_positive_int(parts[1], "viewport height")
    if len(parts) == 2:
        return (vw, vh), None
    nums = []
    for text, what in zip(parts[2:], ("sx", "sy", "sw", "sh"), strict=True):
        if text == "":
            nums.append(None)
            continue
        try:
            nums.append(int(text))
        except ValueError as exc:
            raise RenderError(f"viewport {what}: {text[:30]!r} is not an integer") from exc
        if abs(nums[-1] or 0) > 1 << 20:
            raise RenderError(f"viewport {what} is out of range")
    sx, sy, sw, sh = nums
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise RenderError("viewport sx and sy must not be negative")
    if sw == 0 or sh == 0:
        raise RenderError("viewport sw and sh must not be 0")
    return (vw, vh), Region(sx or 0, sy or 0, sw or 0, sh or 0)


def parse_region(value: str) -> tuple[float, float, float, float]:
    """WADO-URI ``region=xmin,ymin,xmax,ymax`` (PS3.18 §9): fractions of the image, 0..1."""
    parts = value.split(",")
    if len(parts) != 4:
        raise RenderError("region must be xmin,ymin,xmax,ymax")
    x0, y0, x1, y1 = (parse_number(p, "region") for p in parts)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise RenderError("region values must satisfy 0 <= min < max <= 1")
    return x0, y0, x1, y1


def parse_quality(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text[:4]) <= 100 or len(text) > 3:
        raise RenderError(f"quality: {value[:40]!r} is not an integer 1..100")
    return int(text)


# == reading one frame =====================================================================
@dataclass
class Frame:
    """One decoded frame and the header it came with."""

    header: Dataset
    pixels: np.ndarray  # (rows, columns) or (rows, columns, samples)
    photometric: str  # after decoding (e.g. RGB for a YBR JPEG the codec converted)
    index: int  # 0-based frame index
    number_of_frames: int


def _open_dataset_file(path: Path, transfer_syntax_uid: str) -> tuple[BinaryIO, bool]:
    """The file, or (deflated bare data sets only) an inflated in-memory copy."""
    fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if transfer_syntax_uid != DEFLATED_LE:
        return fh, False
    with fh:
        head = fh.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            fh.seek(0)
            ds = dcmread(fh, force=True)  # pydicom inflates Part-10 files
            buf = io.BytesIO()
            ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
            ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
            buf.seek(0)
            return buf, True
        fh.seek(0)
        raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read())
        return io.BytesIO(raw), True


def read_frame(path: Path, transfer_syntax_uid: str, frame: int = 1) -> Frame:
    """Decode frame ``frame`` (1-based) of the stored instance at ``path`` (Part-10 or a bare
    data set in ``transfer_syntax_uid``). Raises FrameNotFound, NotRenderable."""
    from pydicom.pixels import get_decoder

    fh, inflated = _open_dataset_file(Path(path), transfer_syntax_uid)
    with fh:
        try:
            header = dcmread(fh, stop_before_pixels=True, force=True)
        except Exception as exc:
            raise NotRenderable(f"cannot read the data set: {exc}") from exc
        ts = UID(EXPLICIT_LE if inflated else transfer_syntax_uid)
        if not header.file_meta or "TransferSyntaxUID" not in header.file_meta:
            header.file_meta = FileMetaDataset()
        header.file_meta.TransferSyntaxUID = ts
        tag_bytes = fh.read(8)
        if len(tag_bytes) < 8:
            raise NotRenderable("the object has no pixel data")
        endian = "<" if ts.is_little_endian else ">"
        group, elem = struct.unpack(f"{endian}HH", tag_bytes[:4])
        keyword = _PIXEL_TAGS.get((group, elem))
        if keyword is None:
            raise NotRenderable("the object has no pixel data")
        opts: dict[str, Any] = {"pixel_keyword": keyword}
        if not ts.is_implicit_VR:
            opts["pixel_vr"] = tag_bytes[4:6].decode("ascii", "replace")
            length_bytes = fh.read(4)
        else:
            length_bytes = tag_bytes[4:8]
        length = struct.unpack(f"{endian}I", length_bytes)[0] if len(length_bytes) == 4 else 0
        for attr in (
            "Rows",
            "Columns",
            "SamplesPerPixel",
            "BitsAllocated",
            "PhotometricInterpretation",
        ):
            if attr not in header and keyword == "PixelData":
                raise NotRenderable(f"the image has no {attr}")
        nframes = _number_of_frames(header)
        if frame < 1 or frame > nframes:
            raise FrameNotFound(f"frame {frame} does not exist (the object has {nframes})")
        if str(ts) in VIDEO_SYNTAXES:  # MPEG-2 / H.264 / HEVC: decoded with PyAV (FFmpeg)
            from pacsbox.archive.video import VideoRenderError, decode_frame

            try:
                rgb = decode_frame(fh, str(ts), frame - 1)
            except VideoRenderError as exc:
                raise NotRenderable(str(exc)) from exc
            return Frame(header, rgb, "RGB", frame - 1, nframes)
        fast = _native_gray_frame(fh, header, ts, keyword, length, frame - 1, nframes)
        if fast is not None:
            return Frame(header, fast, _photometric(header), frame - 1, nframes)
        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            raise NotRenderable(f"no decoder for {ts.name}") from exc
        if not decoder.is_available:
            raise NotRenderable(f"no decoder is installed for {ts.name}")
        from pydicom.pixels.utils import as_pixel_options

        options = as_pixel_options(header, transfer_syntax_uid=ts, **opts)
        options["number_of_frames"] = nframes
        options["as_rgb"] = True
        try:
            arr, props = decoder.as_array(fh, index=frame - 1, **options)
        except Exception as exc:
            raise NotRenderable(f"cannot decode frame {frame}: {exc}") from exc
    photometric = str(
        props.get(
            "photometric_interpretation", header.get("PhotometricInterpretation", "MONOCHROME2")
        )
    )
    return Frame(header, arr, photometric.strip().upper(), frame - 1, nframes)


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()


def _native_gray_frame(
    fh: BinaryIO, ds: Dataset, ts: UID, keyword: str, length: int, index: int, nframes: int
) -> np.ndarray | None:
    """Fast path for the common case (PS3.5 §8.1.1 native little endian, one sample of 8, 16
    or 32 bits): read only the frame's bytes and view them with numpy; None otherwise (the
    pydicom decoder then does the work)."""
    if keyword != "PixelData" or not ts.is_little_endian or ts.is_compressed:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored") or bits)
        samples = int(ds.get("SamplesPerPixel") or 1)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
    except (AttributeError, TypeError, ValueError):
        return None
    if samples != 1 or bits not in (8, 16, 32) or not 0 < stored <= bits or rows * cols == 0:
        return None
    if _photometric(ds) not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    size = rows * cols * bits // 8
    if length == 0xFFFFFFFF or length < size * nframes:
        return None  # undefined or short length: let pydicom judge
    fh.seek(index * size, os.SEEK_CUR)
    data = fh.read(size)
    if len(data) != size:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    arr = np.frombuffer(data, dtype=dtype).reshape(rows, cols)
    if stored < bits:  # bits above Bits Stored are not part of the value (PS3.5 §8.1.1)
        shift = bits - stored  # signed: sign-extend from bit Bits Stored - 1
        arr = (arr << shift) >> shift if signed else arr & dtype.type((1 << stored) - 1)
    return arr


def _number_of_frames(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


# == grayscale: modality LUT, VOI LUT, presentation =========================================
def _fg_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in the frame's Per-Frame Functional Groups, else in the
    Shared Functional Groups (PS3.3 §C.7.6.16)."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(groups)
        if seq is not None and len(seq) > i:
            inner = seq[i].get(sequence)
            if inner is not None and len(inner) > 0:
                return inner[0]
    return None


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _lut(item: Dataset, data_keyword: str = "LUTData") -> tuple[int, int, np.ndarray] | None:
    """(first mapped value, bits per entry, data) of a LUT item (PS3.3 §C.11.1.1.1)."""
    desc = item.get("LUTDescriptor")
    data = item.get(data_keyword)
    if desc is None or data is None or len(desc) != 3:
        return None
    entries, first, bits = (int(v) for v in desc)
    entries = entries or 65536
    if isinstance(data, bytes | bytearray):
        dtype = "<u1" if bits <= 8 and len(data) == entries else "<u2"
        table = np.frombuffer(bytes(data), dtype=dtype)
    else:
        table = np.asarray(list(data) if not isinstance(data, int) else [data])
    if table.size == 0:
        return None
    return first, bits, table[:entries].astype(np.float64)


def _modality_function(ds: Dataset, index: int) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """Stored values → modality values (PS3.3 §C.11.1), vectorised on float64 arrays; and
    whether it is a linear rescale (True) or a Modality LUT (False)."""
    item = _fg_item(ds, index, "PixelValueTransformationSequence")
    src = item if item is not None else ds
    slope = _first(src.get("RescaleSlope"))
    intercept = _first(src.get("RescaleIntercept"))
    if slope is None and intercept is None and item is None:
        seq = ds.get("ModalityLUTSequence")
        if seq is not None and len(seq):
            lut = _lut(seq[0])
            if lut is not None:
                first, _bits, table = lut
                if first >= 32768 and int(ds.get("PixelRepresentation", 0)) == 1:
                    first -= 65536  # US/SS descriptor read as unsigned
                last = table.size - 1
                return lambda v: table[np.clip(v - first, 0, last).astype(np.intp)], False
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = intercept or 0.0
    if slope == 1.0 and intercept == 0.0:
        return (lambda v: v), True
    return (lambda v: v * slope + intercept), True


def _window_function(window: Window) -> Callable[[np.ndarray], np.ndarray]:
    """Modality values → 0..255 (float) for a window (PS3.3 §C.11.2.1.2, §C.11.2.1.3)."""
    c, w = window.center, window.width
    if window.function == "LINEAR":
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2

        def linear(v: np.ndarray) -> np.ndarray:
            if w == 1:  # a threshold: below/at low -> 0, above -> 255
                return np.where(v > low, 255.0, 0.0)
            y = ((v - (c - 0.5)) / (w - 1) + 0.5) * 255.0
            y = np.where(v <= low, 0.0, y)
            return np.where(v > high, 255.0, y)

        return linear
    if window.function == "LINEAR_EXACT":

        def exact(v: np.ndarray) -> np.ndarray:
            y = ((v - c) / w + 0.5) * 255.0
            y = np.where(v <= c - w / 2, 0.0, y)
            return np.where(v > c + w / 2, 255.0, y)

        return exact

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 255.0 / (1.0 + np.exp(np.clip(-4.0 * (v - c) / w, -700, 700)))

    return sigmoid


def _dataset_window(ds: Dataset, index: int) -> Window | None:
    """The first window of the frame's Frame VOI LUT Sequence or of the data set."""
    item = _fg_item(ds, index, "FrameVOILUTSequence")
    for src in (item, ds):
        if src is None:
            continue
        c, w = _first(src.get("WindowCenter")), _first(src.get("WindowWidth"))
        if c is None or w is None:
            continue
        function = str(src.get("VOILUTFunction", "") or "LINEAR").strip().upper() or "LINEAR"
        if function not in VOI_FUNCTIONS:
            function = "LINEAR"
        try:
            return Window(c, w, function)
        except RenderError:
            continue  # a window the data set got wrong: fall back to the next source
    return None


def _voi_lut_function(ds: Dataset) -> Callable[[np.ndarray], np.ndarray] | None:
    """The first VOI LUT Sequence item as a function to 0..255 (PS3.3 §C.11.2.1.1)."""
    seq = ds.get("VOILUTSequence")
    if seq is None or not len(seq):
        return None
    lut = _lut(seq[0])
    if lut is None:
        return None
    first, bits, table = lut
    if first >= 32768 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 65536
    bits = min(max(bits, 8), 16)
    top = float((1 << bits) - 1)
    if table.max(initial=0) > top:  # entries deeper than the descriptor says
        top = float(table.max())
    last = table.size - 1
    return lambda v: table[np.clip(np.rint(v) - first, 0, last).astype(np.intp)] * (255.0 / top)


def _padding_mask(ds: Dataset, arr: np.ndarray) -> np.ndarray | None:
    pad = ds.get("PixelPaddingValue")
    if pad is None or isinstance(pad, bytes):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None or isinstance(limit, bytes):
        return arr != int(pad)
    lo, hi = sorted((int(pad), int(limit)))
    return (arr < lo) | (arr > hi)


def grayscale_to_8bit(frame: Frame, window: Window | None = None) -> np.ndarray:
    """The display values (uint8, rows × columns) of a MONOCHROME1/2 frame: modality LUT,
    VOI LUT (request window first), MONOCHROME1 inversion."""
    ds, arr, index = frame.header, frame.pixels, frame.index
    if arr.ndim == 3:
        arr = arr[..., 0]
    modality, linear = _modality_function(ds, index)
    voi: Callable[[np.ndarray], np.ndarray] | None = None
    chosen = window or _dataset_window(ds, index)
    voi = _window_function(chosen) if chosen is not None else _voi_lut_function(ds)
    invert = frame.photometric == "MONOCHROME1"

    integer = arr.dtype.kind in "iu"
    lo = hi = 0
    if integer and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
    use_lut = integer and arr.size > 0 and (hi - lo) < _MAX_LUT_RANGE

    if voi is None:  # min/max of the frame's modality values, padding excluded
        mask = _padding_mask(ds, arr)
        sample = arr[mask] if mask is not None and mask.any() else arr
        if sample.size == 0:
            vmin = vmax = 0.0
        elif linear:  # a rescale keeps the order: the extremes of the stored values
            if sample is arr and integer:
                smin, smax = float(lo), float(hi)
            else:
                smin, smax = float(np.nanmin(sample)), float(np.nanmax(sample))
            ends = modality(np.array([smin, smax], dtype=np.float64))
            vmin, vmax = float(ends.min()), float(ends.max())
        else:  # a modality LUT may be non-monotonic: the values actually present
            present = modality(sample.astype(np.float64).ravel())
            vmin, vmax = float(np.nanmin(present)), float(np.nanmax(present))
        span = vmax - vmin

        def minmax(v: np.ndarray) -> np.ndarray:
            if span <= 0:
                return np.zeros_like(v)
            return (v - vmin) * (255.0 / span)

        voi = minmax

    def pipeline(v: np.ndarray) -> np.ndarray:
        y = voi(modality(v))
        out = np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)
        return 255 - out if invert else out

    if use_lut:
        table = pipeline(np.arange(lo, hi + 1, dtype=np.float64))
        return table[arr - lo] if lo >= 0 else table[arr.astype(np.int32) - lo]
    return pipeline(np.nan_to_num(arr.astype(np.float64)))


# == colour ==================================================================================
def color_to_8bit(frame: Frame) -> np.ndarray:
    """RGB uint8 (rows × columns × 3) of a colour frame (PS3.3 §C.7.6.3.1.2)."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    ds, arr, pi = frame.header, frame.pixels, frame.photometric
    if pi == "PALETTE COLOR":
        if arr.ndim == 3:
            arr = arr[..., 0]
        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise NotRenderable(f"bad palette colour lookup tables: {exc}") from exc
        rgb = rgb[..., :3]
        if rgb.dtype.itemsize > 1:
            rgb = (rgb >> 8).astype(np.uint8)
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise NotRenderable(f"a {pi} image without three samples per pixel")
    if pi in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    elif pi not in _COLOR_AS_RGB:
        raise NotRenderable(f"photometric interpretation {pi} cannot be rendered")
    arr = arr[..., :3]
    if arr.dtype.itemsize > 1 or arr.dtype.kind != "u":
        bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
        arr = np.clip(arr.astype(np.int64), 0, (1 << bits) - 1)
        arr = (arr >> max(bits - 8, 0)) if bits >= 8 else arr << (8 - bits)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def display_array(frame: Frame, window: Window | None = None) -> np.ndarray:
    """The frame as 8-bit display values: (rows, columns) gray or (rows, columns, 3) RGB."""
    if frame.photometric in ("MONOCHROME1", "MONOCHROME2"):
        return grayscale_to_8bit(frame, window)
    return color_to_8bit(frame)


# == geometry and encoding =====================================================================
def crop(arr: np.ndarray, params: RenderParams) -> np.ndarray:
    """Apply a fractional (WADO-URI) or pixel (viewport) source region."""
    rows, cols = arr.shape[:2]
    if params.fraction is not None:
        x0, y0, x1, y1 = params.fraction
        c0, c1 = int(math.floor(x0 * cols)), max(int(math.ceil(x1 * cols)), 1)
        r0, r1 = int(math.floor(y0 * rows)), max(int(math.ceil(y1 * rows)), 1)
        c0, r0 = min(c0, c1 - 1), min(r0, r1 - 1)
        return arr[r0:r1, c0:c1]
    region = params.region
    if region is None:
        return arr
    sw = region.width or (cols - region.x)
    sh = region.height or (rows - region.y)
    if region.x >= cols or region.y >= rows:
        raise RenderError("the viewport source region lies outside the image")
    out = arr[region.y : region.y + abs(sh), region.x : region.x + abs(sw)]
    if sw < 0:
        out = out[:, ::-1]
    if sh < 0:
        out = out[::-1]
    return out


def fit_size(cols: int, rows: int, size: tuple[int | None, int | None] | None) -> tuple[int, int]:
    """Output (columns, rows) that fits ``size`` keeping the aspect ratio (PS3.18 §8.3.5.1.3:
    the image is scaled to the viewport; §9: rows/columns). Capped at MAX_OUTPUT_SIDE."""
    if size is None or (size[0] is None and size[1] is None):
        scale = 1.0
    else:
        want_c, want_r = size
        scales = []
        if want_c is not None:
            scales.append(min(want_c, MAX_OUTPUT_SIDE) / cols)
        if want_r is not None:
            scales.append(min(want_r, MAX_OUTPUT_SIDE) / rows)
        scale = min(scales)
    scale = min(scale, MAX_OUTPUT_SIDE / max(cols, rows))
    if scale == 1.0:
        return cols, rows
    return max(1, round(cols * scale)), max(1, round(rows * scale))


def encode(
    arr: np.ndarray,
    media_type: str,
    quality: int = DEFAULT_QUALITY,
    size: tuple[int, int] | None = None,
) -> RenderedImage:
    """8-bit gray/RGB array → JPEG (baseline, ``quality``), PNG or GIF bytes (Pillow)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB")
    if size is not None and size != img.size:
        shrinking = size[0] < img.size[0]
        resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        img = img.resize(size, resample, reducing_gap=3.0 if shrinking else None)
    buf = io.BytesIO()
    fmt = MEDIA_TYPES[media_type]
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "GIF")
    return RenderedImage(buf.getvalue(), media_type, img.size[0], img.size[1])


def render(path: Path | str, transfer_syntax_uid: str, params: RenderParams) -> RenderedImage:
    """Render frame ``params.frame`` of the stored instance at ``path``."""
    frame = read_frame(Path(path), transfer_syntax_uid, params.frame)
    arr = crop(display_array(frame, params.window), params)
    if arr.size == 0:
        raise RenderError("the source region is empty")
    size = fit_size(arr.shape[1], arr.shape[0], params.size)
    return encode(arr, params.media_type, params.quality, size)


# == finding what to render (index look-ups) =================================================
@dataclass(frozen=True)
class StoredImage:
    """Where a stored instance is and what the index knows about its pixels."""

    path: Path
    transfer_syntax_uid: str
    storage_format: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    rows: int | None = None
    number_of_frames: int | None = None

    @property
    def is_image(self) -> bool:
        """The index saw Rows in the data set (image pixel module); SR, PDF... have none."""
        return bool(self.rows)

    @property
    def frames(self) -> int:
        return max(int(self.number_of_frames or 1), 1)


def _image_columns() -> tuple[Any, ...]:
    from pacsbox.archive.retrieve import INSTANCE, SERIES, STUDY

    return (
        INSTANCE.c.file_path,
        INSTANCE.c.linked,
        INSTANCE.c.transfer_syntax_uid,
        INSTANCE.c.storage_format,
        INSTANCE.c.sop_class_uid,
        INSTANCE.c.sop_instance_uid,
        SERIES.c.series_instance_uid,
        STUDY.c.study_instance_uid,
        INSTANCE.c.rows,
        INSTANCE.c.number_of_frames,
    )


def _stored(store: Any, row: Any) -> StoredImage:
    file_path, linked, ts, fmt, sop_class, sop, series, study, rows, frames = row
    try:
        path = Path(store.locate(file_path, linked))
    except ValueError:  # a key that would leave the store root: it cannot be opened
        path = Path(store.root) / ".invalid-key"
    return StoredImage(
        path, str(ts), str(fmt), str(sop_class), str(sop), str(series), str(study), rows, frames
    )


def find_instance(
    engine: Any, store: Any, study_uid: str | None, series_uid: str | None, sop_uid: str
) -> StoredImage | None:
    """The instance ``sop_uid`` if it belongs to ``study_uid`` (and ``series_uid``; None
    checks nothing)."""
    from sqlalchemy import select

    from pacsbox.archive.retrieve import INSTANCE, SERIES, STUDY

    stmt = (
        select(*_image_columns())
        .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
        .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        .where(INSTANCE.c.sop_instance_uid == sop_uid)
    )
    if study_uid is not None:
        stmt = stmt.where(STUDY.c.study_instance_uid == study_uid)
    if series_uid is not None:
        stmt = stmt.where(SERIES.c.series_instance_uid == series_uid)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else _stored(store, row)


def representative_instance(
    engine: Any, store: Any, study_uid: str, series_uid: str | None = None
) -> tuple[bool, StoredImage | None]:
    """The thumbnail instance of a series (its middle image by Instance Number) or of a study
    (the middle image of its first series, by Series Number, that has images).

    Returns (the study/series exists, the instance or None when it holds no image)."""
    from sqlalchemy import func, select

    from pacsbox.archive.retrieve import INSTANCE, SERIES, STUDY

    last = 2_147_483_647
    with engine.connect() as conn:
        series_stmt = (
            select(SERIES.c.id)
            .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
            .where(STUDY.c.study_instance_uid == study_uid)
        )
        if series_uid is not None:
            series_stmt = series_stmt.where(SERIES.c.series_instance_uid == series_uid)
        series_ids = [
            int(r[0])
            for r in conn.execute(
                series_stmt.order_by(func.coalesce(SERIES.c.series_number, last), SERIES.c.id)
            )
        ]
        if not series_ids:
            return False, None
        for sid in series_ids:
            images = (INSTANCE.c.series_fk == sid, INSTANCE.c.rows > 0)
            n = int(conn.execute(select(func.count()).where(*images)).scalar_one())
            if not n:
                continue
            row = conn.execute(
                select(*_image_columns())
                .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
                .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
                .where(*images)
                .order_by(func.coalesce(INSTANCE.c.instance_number, last), INSTANCE.c.id)
                .offset((n - 1) // 2)
                .limit(1)
            ).first()
            if row is not None:
                return True, _stored(store, row)
    return True, None


def list_images(
    engine: Any, store: Any, study_uid: str, series_uid: str | None = None
) -> tuple[bool, list[StoredImage]]:
    """The image instances of a study (or one of its series) in viewing order: Series Number,
    then Instance Number. Returns (the study/series exists, the images)."""
    from sqlalchemy import func, select

    from pacsbox.archive.retrieve import INSTANCE, SERIES, STUDY

    last = 2_147_483_647
    where = [STUDY.c.study_instance_uid == study_uid]
    if series_uid is not None:
        where.append(SERIES.c.series_instance_uid == series_uid)
    with engine.connect() as conn:
        exists = conn.execute(
            select(SERIES.c.id).join(STUDY, STUDY.c.id == SERIES.c.study_fk).where(*where).limit(1)
        ).first()
        if exists is None:
            return False, []
        rows = conn.execute(
            select(*_image_columns())
            .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
            .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
            .where(*where, INSTANCE.c.rows > 0)
            .order_by(
                func.coalesce(SERIES.c.series_number, last),
                SERIES.c.id,
                func.coalesce(INSTANCE.c.instance_number, last),
                INSTANCE.c.id,
            )
        ).all()
    return True, [_stored(store, row) for row in rows]
