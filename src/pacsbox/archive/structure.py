"""Structural completeness of an encoded data set (PS3.5 §7.1, §7.5), without decoding values.

The header parser stops at Pixel Data, so it cannot see a data set that was cut inside Pixel
Data or that declares more bytes than it carries. This walks the element headers of the whole
data set — skipping values by their lengths, descending into sequences and encapsulated pixel
data of undefined length — and checks that the last element ends exactly at the end of the
bytes. Cost: one small ``struct`` read per top-level element, nothing per pixel.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Sequence
from typing import BinaryIO

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
#: Trailing zero bytes after the last element are tolerated (media and some writers pad
#: files; zeros cannot hide a missing part of a declared element). A zero tag is padding.
_MAX_DEPTH = 64


class Truncated(ValueError):
    """The data set ends before an element, item or sequence it declares."""


_UNPACK = {
    e: (struct.Struct(e + "HHI"), struct.Struct(e + "HH2sH"), struct.Struct(e + "I")) for e in "<>"
}
_ITEM_INT, _ITEM_END_INT, _SEQ_END_INT = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Bytes:
    """Random access over a list of fragments, a bytes object or a file.

    ``view`` hands out (buffer, offset) pairs for ``struct.unpack_from`` so that an element
    header inside one fragment is read without a copy; the fragment of the previous read is
    tried first (the walk moves forward), then a binary search.
    """

    def __init__(
        self, source: Sequence[bytes | memoryview] | BinaryIO, size: int, base: int = 0
    ) -> None:
        self.size = size
        self.base = base
        self.file: BinaryIO | None = None
        self.chunks: list[memoryview] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self._i = 0
        if hasattr(source, "read"):
            self.file = source  # type: ignore[assignment]
        else:
            pos = 0
            for chunk in source:  # type: ignore[union-attr]
                if not len(chunk):
                    continue
                self.starts.append(pos)
                self.chunks.append(memoryview(chunk))
                pos += len(chunk)
                self.ends.append(pos)

    def _index(self, offset: int) -> int:
        i = self._i
        if self.starts[i] <= offset < self.ends[i]:
            return i
        i = bisect_right(self.starts, offset) - 1
        self._i = i
        return i

    def read(self, offset: int, n: int) -> bytes:
        if offset + n > self.size:
            raise Truncated(f"data set ends at byte {self.size}, an element header at {offset}")
        if self.file is not None:
            self.file.seek(self.base + offset)
            return self.file.read(n)
        if n == 0:
            return b""
        i = self._index(offset)
        inner = offset - self.starts[i]
        out = bytes(self.chunks[i][inner : inner + n])
        while len(out) < n:
            i += 1
            out += bytes(self.chunks[i][: n - len(out)])
        return out

    def view(self, offset: int, n: int) -> tuple[bytes | memoryview, int]:
        """``n`` bytes at ``offset`` as (buffer, position in it); Truncated past the end."""
        if offset + n > self.size:
            raise Truncated(f"data set ends at byte {self.size}, an element header at {offset}")
        if self.file is None:
            i = self._index(offset)
            if offset + n <= self.ends[i]:
                return self.chunks[i], offset - self.starts[i]
        return self.read(offset, n), 0

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

    def header(self, pos: int, implicit: bool, e: str) -> tuple[int, bytes, int, int]:
        """(tag as an int, VR, value length, header size) of the element at ``pos``."""
        hhi, hh2sh, i4 = _UNPACK[e]
        buf, at = self.data.view(pos, 8)
        group, elem, vr, short = hh2sh.unpack_from(buf, at)
        if group == 0xFFFE or implicit:
            return group << 16 | elem, b"", hhi.unpack_from(buf, at)[2], 8
        if vr in _LONG_VRS:
            buf, at = self.data.view(pos + 8, 4)
            return group << 16 | elem, vr, i4.unpack_from(buf, at)[0], 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise Truncated(f"no valid VR at byte {pos}")
        return group << 16 | elem, vr, short, 8

    def elements(self, pos: int, end: int | None, implicit: bool, e: str, depth: int) -> int:
        """Walk elements from ``pos`` to ``end`` (or to an item delimiter); return the end.

        At the top level (``end`` None) trailing zero bytes are tolerated as padding. The
        element header is decoded inline (this loop runs once per element of every received
        data set); ``header`` is the same decoding for items and the rare cases.
        """
        if depth > _MAX_DEPTH:
            raise Truncated("sequences nested too deeply")
        top = end is None
        data = self.data
        limit = data.size if end is None else end
        hhi, hh2sh, i4 = _UNPACK[e]
        chunks, starts, ends = data.chunks, data.starts, data.ends
        in_memory = data.file is None
        while pos < limit:
            if limit - pos < 8:
                n = limit - pos
                if top and data.read(pos, n) == bytes(n):
                    return limit
                data.read(pos, 8)  # raises Truncated
            i = data._i if in_memory else 0
            if in_memory and starts[i] <= pos and pos + 8 <= ends[i]:
                buf, at = chunks[i], pos - starts[i]
            else:
                buf, at = data.view(pos, 8)
            group, elem, vr, short = hh2sh.unpack_from(buf, at)
            if top and not (group or elem or short) and vr == b"\0\0" and data.zeros_from(pos):
                return limit
            if group == 0xFFFE or implicit:
                tag = group << 16 | elem
                length = hhi.unpack_from(buf, at)[2]
                pos += 8
                if tag == _ITEM_END_INT:
                    return pos
            elif vr in _LONG_VRS:
                buf, at = data.view(pos + 8, 4)
                length = i4.unpack_from(buf, at)[0]
                pos += 12
            elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                length = short
                pos += 8
            else:
                raise Truncated(f"no valid VR at byte {pos}")
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
            if tag == _SEQ_END_INT:
                return pos
            if tag != _ITEM_INT:
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
