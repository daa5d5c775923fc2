"""Frames and bulk data of stored instances for WADO-RS (PS3.18 §10.4.1.1.5 / §10.4.1.1.6).

Pixel Data (7FE0,0010) is found by walking the top-level element headers of the stored file
(values are skipped by their lengths, PS3.5 §7.1) — nothing before it is decoded. Then:

- native pixel data (PS3.5 §8.1.1): frame *n* is the byte slice
  ``value_offset + (n-1) * frame_size`` of ``Rows × Columns × Samples × BitsAllocated / 8``
  bytes; only that slice is read;
- encapsulated pixel data (PS3.5 §8.2, Annex A.4): only the item headers are read (Basic
  Offset Table, then one 8-byte header per fragment); frame *n* is the fragments the Basic
  Offset Table assigns to it, or one fragment per frame when the table is empty and the counts
  agree, or the fragments between two JPEG / JPEG 2000 start markers. Anything else
  (Extended Offset Table only, odd layouts) falls back to pydicom reading the pixel data.

Conversions (decode to native, encode JPEG-LS / JPEG 2000 lossless) go through pydicom's
pixel backends, one frame at a time.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pacsbox.archive.structure import UNDEFINED, Truncated, _Bytes, _Walker
from pacsbox.archive.transcode import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NATIVE_SYNTAXES,
    can_decode,
    can_encode,
    dataset_offset,
)

PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_SEQ_END = 0xFFFEE0DD

#: Media types of compressed frames and the transfer syntaxes each may carry (PS3.18
#: Table 8.7.3-5 "Transfer syntax UID for single-frame / multi-frame image media types"),
#: the first being the default.
IMAGE_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/x-jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5",),
}
#: The media type a compressed transfer syntax's frames are served as.
MEDIA_TYPE_OF_SYNTAX: dict[str, str] = {}
for _media, _syntaxes in IMAGE_MEDIA_TYPES.items():
    for _ts in _syntaxes:
        MEDIA_TYPE_OF_SYNTAX.setdefault(_ts, _media)


class FrameError(Exception):
    """The frame cannot be produced (``status`` is the HTTP status to answer)."""

    def __init__(self, message: str, status: int = 406) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PixelLocation:
    """Where Pixel Data sits in a stored file."""

    value_offset: int  #: absolute file offset of the value (native) or of the first item
    length: int  #: value length; UNDEFINED for encapsulated
    vr: str
    #: encapsulated: (absolute offset of the fragment's data, its length) per fragment
    fragments: list[tuple[int, int]] = field(default_factory=list)
    #: encapsulated: the Basic Offset Table (offsets relative to the first fragment's item)
    offsets: list[int] = field(default_factory=list)
    #: encapsulated: absolute offset of each fragment's item tag
    item_starts: list[int] = field(default_factory=list)

    @property
    def encapsulated(self) -> bool:
        return self.length == UNDEFINED


@dataclass(frozen=True)
class ImageFacts:
    """The index columns frames need (instance table)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int

    @property
    def frame_size(self) -> int:
        bits = self.rows * self.columns * self.samples * self.bits_allocated
        if bits % 8:
            raise FrameError("bit-packed frames that do not end on a byte are not supported")
        return bits // 8


def locate_pixel_data(fh: BinaryIO, transfer_syntax: str) -> PixelLocation | None:
    """Find (7FE0,0010) at the top level of the stored data set, or None when absent."""
    if transfer_syntax == DEFLATED_LE:
        raise FrameError("deflated data sets are read whole", status=0)
    base = dataset_offset(fh)
    size = os.fstat(fh.fileno()).st_size - base
    data = _Bytes(fh, size, base)
    implicit = transfer_syntax == IMPLICIT_LE
    e = ">" if transfer_syntax == EXPLICIT_BE else "<"
    walker = _Walker(data, implicit, e == "<")
    pos = 0
    try:
        while pos + 8 <= size:
            tag, vr, length, hsize = walker.header(pos, implicit, e)
            if tag == PIXEL_DATA:
                loc = PixelLocation(base + pos + hsize, length, vr.decode("ascii", "replace"))
                if length == UNDEFINED:
                    _read_items(data, pos + hsize, base, loc)
                return loc
            if tag > PIXEL_DATA or tag == 0:
                return None
            pos += hsize
            if length == UNDEFINED:
                pos = walker.items(pos, implicit or vr == b"UN", "<" if vr == b"UN" else e, 1)
            else:
                pos += length
    except Truncated as exc:
        raise FrameError(f"the stored file is damaged: {exc}", status=500) from exc
    return None


def _read_items(data: _Bytes, pos: int, base: int, loc: PixelLocation) -> None:
    first = True
    while True:
        head = data.read(pos, 8)
        tag = struct.unpack("<HH", head[:4])
        tag_int = tag[0] << 16 | tag[1]
        length = struct.unpack("<I", head[4:])[0]
        if tag_int == _SEQ_END:
            return
        if tag_int != _ITEM or length == UNDEFINED:
            raise FrameError("encapsulated pixel data without proper items", status=500)
        if first:
            if length:
                table = data.read(pos + 8, length)
                loc.offsets = list(struct.unpack(f"<{length // 4}I", table[: length // 4 * 4]))
            first = False
        else:
            loc.item_starts.append(base + pos)
            loc.fragments.append((base + pos + 8, length))
        pos += 8 + length


def _fragment_groups(fh: BinaryIO, loc: PixelLocation, n_frames: int) -> list[list[int]] | None:
    """Fragment indices of each frame, or None when the layout cannot tell."""
    count = len(loc.fragments)
    if count == 0:
        return None
    if n_frames <= 1:
        return [list(range(count))]
    if loc.offsets and len(loc.offsets) == n_frames:
        first = loc.item_starts[0]
        starts = [first + o for o in loc.offsets] + [1 << 62]
        groups: list[list[int]] = [[] for _ in range(n_frames)]
        frame = 0
        for i, item in enumerate(loc.item_starts):
            while frame + 1 < n_frames and item >= starts[frame + 1]:
                frame += 1
            groups[frame].append(i)
        if all(groups) and all(loc.item_starts[g[0]] == starts[k] for k, g in enumerate(groups)):
            return groups
        return None
    if count == n_frames:
        return [[i] for i in range(count)]
    # Several fragments per frame, no table: a frame starts where a codestream starts
    # (JPEG SOI FFD8, JPEG 2000 SOC FF4F or a JP2 signature box).
    heads = []
    for off, length in loc.fragments:
        heads.append(os.pread(fh.fileno(), min(12, length), off))
    starts_at = [
        i for i, h in enumerate(heads) if h[:2] in (b"\xff\xd8", b"\xff\x4f") or h[4:8] == b"jP  "
    ]
    if len(starts_at) == n_frames and starts_at[0] == 0:
        bounds = starts_at + [count]
        return [list(range(bounds[k], bounds[k + 1])) for k in range(n_frames)]
    return None


def stored_frames(
    path: Path, transfer_syntax: str, facts: ImageFacts, numbers: list[int]
) -> list[bytes]:
    """The requested frames (1-based) exactly as stored: native slices (little endian native
    syntaxes) or the concatenated fragments of each compressed frame."""
    with open(path, "rb") as fh:
        try:
            loc = locate_pixel_data(fh, transfer_syntax)
        except FrameError as exc:
            if exc.status == 0:
                return [decoded_frame(path, n) for n in numbers]
            raise
        if loc is None:
            raise FrameError("the instance has no Pixel Data", status=404)
        if not loc.encapsulated:
            if transfer_syntax == EXPLICIT_BE and facts.bits_allocated > 8:
                return [decoded_frame(path, n) for n in numbers]
            size = facts.frame_size
            out = []
            for n in numbers:
                start = (n - 1) * size
                if start + size > loc.length:
                    raise FrameError(f"frame {n} lies beyond the stored Pixel Data", status=404)
                out.append(os.pread(fh.fileno(), size, loc.value_offset + start))
            return out
        groups = _fragment_groups(fh, loc, facts.frames)
        if groups is None:
            return _frames_by_pydicom(fh, loc, facts.frames, numbers)
        out = []
        for n in numbers:
            parts = [
                os.pread(fh.fileno(), loc.fragments[i][1], loc.fragments[i][0])
                for i in groups[n - 1]
            ]
            out.append(b"".join(parts))
        return out


def _frames_by_pydicom(
    fh: BinaryIO, loc: PixelLocation, n_frames: int, numbers: list[int]
) -> list[bytes]:
    """Frames when the item headers alone cannot tell them apart: pydicom reads the whole
    encapsulated value (one instance in memory)."""
    from pydicom.encaps import generate_frames

    last_off, last_len = loc.fragments[-1]
    fh.seek(loc.value_offset)
    buffer = fh.read(last_off + last_len - loc.value_offset)
    try:
        frames = list(generate_frames(buffer, number_of_frames=n_frames))
    except Exception as exc:
        raise FrameError(f"cannot split the pixel data into frames: {exc}", 500) from exc
    if any(n > len(frames) for n in numbers):
        raise FrameError("frame number beyond the stored frames", status=404)
    return [frames[n - 1] for n in numbers]


def decoded_frame(path: Path, number: int) -> bytes:
    """Frame ``number`` decoded to native little-endian bytes (photometric as the decoder
    returns it, no colour-space conversion: ``raw=True``)."""
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(os.fspath(path), index=number - 1, raw=True)
    except Exception as exc:
        raise FrameError(f"cannot decode frame {number}: {exc}", status=406) from exc
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def encoded_frame(path: Path, number: int, target: str) -> bytes:
    """Frame ``number`` encoded losslessly in ``target`` (JPEG-LS / JPEG 2000 / RLE)."""
    from pydicom import dcmread
    from pydicom.pixels import get_encoder

    if not can_encode(target):
        raise FrameError(f"cannot encode {target}")
    ds = dcmread(os.fspath(path), force=True)
    ts = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
    try:
        if ts not in NATIVE_SYNTAXES:
            if not can_decode(ts):
                raise FrameError(f"cannot decode {ts}")
            ds.decompress(generate_instance_uid=False)
        return get_encoder(target).encode(ds, index=number - 1)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"cannot encode frame {number} as {target}: {exc}") from exc


def element_value(path: Path, steps: list[int]) -> bytes:
    """The value bytes of an element named by ``tag[/item/tag...]`` (item indices 0-based),
    e.g. ``[0x00880200, 0, 0x7FE00010]``: bytes as stored (binary VRs) or UTF-8 text."""
    from pydicom import dcmread

    ds = dcmread(os.fspath(path), force=True)
    current = ds
    value: object = None
    for k in range(0, len(steps), 2):
        tag = steps[k]
        if tag not in current:
            raise FrameError("no such element", status=404)
        elem = current[tag]
        if k + 1 < len(steps):
            index = steps[k + 1]
            if elem.VR != "SQ" or index >= len(elem.value):
                raise FrameError("no such sequence item", status=404)
            current = elem.value[index]
        else:
            value = elem.value
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise FrameError("the element is not a bulk data value", status=404)
