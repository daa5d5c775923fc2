"""Structural completeness of an encoded data set (PS3.5 §7.1, §7.5), without decoding values.

The header parser stops at Pixel Data, so it cannot see a data set that was cut inside Pixel
Data or that declares more bytes than it carries. This walks the element headers of the whole
data set — skipping values by their lengths, descending into sequences and encapsulated pixel
data of undefined length — and checks that the last element ends exactly at the end of the
bytes. Cost: one small ``struct`` read per top-level element, nothing per pixel.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import BinaryIO

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
#: Trailing zero bytes after the last element are tolerated (media and some writers pad
#: files; zeros cannot hide a missing part of a declared element). A zero tag is padding.
_MAX_DEPTH = 64


class Truncated(ValueError):
    """The data set ends before an element, item or sequence it declares."""


class _Bytes:
    """Random access over a list of fragments, a bytes object or a file."""

    def __init__(
        self, source: Sequence[bytes | memoryview] | BinaryIO, size: int, base: int = 0
    ) -> None:
        self.size = size
        self.base = base
        self.file: BinaryIO | None = None
        self.chunks: list[memoryview] = []
        self.starts: list[int] = []
        if hasattr(source, "read"):
            self.file = source  # type: ignore[assignment]
        else:
            pos = 0
            for chunk in source:  # type: ignore[union-attr]
                self.starts.append(pos)
                self.chunks.append(memoryview(chunk))
                pos += len(chunk)

    def read(self, offset: int, n: int) -> bytes:
        if offset + n > self.size:
            raise Truncated(f"data set ends at byte {self.size}, an element header at {offset}")
        if self.file is not None:
            self.file.seek(self.base + offset)
            return self.file.read(n)
        # binary search for the chunk holding offset
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        out = b""
        i, inner = lo, offset - self.starts[lo]
        while len(out) < n:
            piece = self.chunks[i][inner : inner + n - len(out)]
            out += bytes(piece)
            i, inner = i + 1, 0
        return out

    def zeros_from(self, offset: int) -> bool:
        while offset < self.size:
            n = min(1 << 20, self.size - offset)
            if self.read(offset, n).count(0) != n:
                return False
            offset += n
        return True


class _Walker:
    def __init__(self, data: _Bytes, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.e = "<" if little else ">"

    def header(self, pos: int, implicit: bool, e: str) -> tuple[tuple[int, int], bytes, int, int]:
        """(tag, VR, value length, header size) of the element at ``pos``."""
        raw = self.data.read(pos, 8)
        group, elem = struct.unpack(e + "HH", raw[:4])
        if group == 0xFFFE or implicit:
            return (group, elem), b"", struct.unpack(e + "I", raw[4:8])[0], 8
        vr = raw[4:6]
        if vr in _LONG_VRS:
            length = struct.unpack(e + "I", self.data.read(pos + 8, 4))[0]
            return (group, elem), vr, length, 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise Truncated(f"no valid VR at byte {pos}")
        return (group, elem), vr, struct.unpack(e + "H", raw[6:8])[0], 8

    def elements(self, pos: int, end: int | None, implicit: bool, e: str, depth: int) -> int:
        """Walk elements from ``pos`` to ``end`` (or to an item delimiter); return the end."""
        if depth > _MAX_DEPTH:
            raise Truncated("sequences nested too deeply")
        limit = self.data.size if end is None else end
        while pos < limit:
            if (
                end is None
                and self.data.read(pos, min(8, limit - pos)) == bytes(min(8, limit - pos))
                and self.data.zeros_from(pos)
            ):
                return limit
            tag, vr, length, size = self.header(pos, implicit, e)
            pos += size
            if tag == ITEM_END:
                return pos
            if length == UNDEFINED:
                nested_implicit = implicit or vr == b"UN"
                nested_e = "<" if vr == b"UN" else e
                pos = self.items(pos, nested_implicit, nested_e, depth + 1)
            else:
                pos += length
        if pos > limit:
            raise Truncated(f"an element runs {pos - limit} bytes past the end of its container")
        return pos

    def items(self, pos: int, implicit: bool, e: str, depth: int) -> int:
        """Walk the items of an undefined-length sequence (or pixel fragments) to its end."""
        while True:
            tag, _vr, length, size = self.header(pos, True, e)
            pos += size
            if tag == SEQ_END:
                return pos
            if tag != ITEM:
                raise Truncated(f"expected an item or sequence delimiter at byte {pos - size}")
            if length == UNDEFINED:
                # walks to just past the item delimitation item (or fails at the end)
                pos = self.elements(pos, self.data.size, implicit, e, depth)
            else:
                if pos + length > self.data.size:
                    raise Truncated("an item runs past the end of the data set")
                pos += length


def check_complete(
    source: Sequence[bytes | memoryview] | BinaryIO,
    size: int,
    transfer_syntax_uid: str,
    base: int = 0,
) -> None:
    """Raise Truncated unless the encoded data set ends exactly where its last element does.

    ``source`` is a list of fragments or a file (the data set starting at byte ``base``, of
    ``size`` bytes). Deflated data sets must be passed inflated.
    """
    implicit = transfer_syntax_uid == "1.2.840.10008.1.2"
    little = transfer_syntax_uid != "1.2.840.10008.1.2.2"
    data = _Bytes(source, size, base)
    try:
        _walk(data, implicit, little)
    except Truncated:
        if implicit or not little:
            raise
        # Some writers label implicit VR data as explicit; readers (pydicom, DCMTK) detect it
        # from the first element. Accept what is complete when read that way.
        try:
            _walk(data, True, True)
        except Truncated:
            pass
        else:
            return
        raise


def _walk(data: _Bytes, implicit: bool, little: bool) -> None:
    walker = _Walker(data, implicit, little)
    end = walker.elements(0, None, implicit, "<" if little else ">", 0)
    if end != data.size:
        raise Truncated(f"the last element ends at byte {end} of {data.size}")
