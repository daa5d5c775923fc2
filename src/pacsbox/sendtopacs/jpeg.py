"""Reading a JPEG file's frame header without decoding it (ITU-T T.81 §B.2), to encapsulate the
stream unchanged as JPEG Baseline (Process 1), PS3.5 §8.2.1 / §A.4.1.

The Photometric Interpretation follows PS3.5 §8.2.1 and PS3.3 §C.7.6.3.1.2: one component →
MONOCHROME2; three components with an Adobe APP14 transform of 0, or component identifiers
'R','G','B' → RGB (no colour transform in the stream); three YCbCr components with chroma
subsampled (4:2:2 or 4:2:0) → YBR_FULL_422. A YCbCr stream without subsampling (4:4:4) is
also labelled YBR_FULL_422 (decided: the IODs we write — VL Image, and dciodvfy's check of SC
— do not allow YBR_FULL, and decoders take the sampling from the JPEG frame header; DCMTK's
img2dcm does the same); ``subsampled`` keeps the truth.
"""

from __future__ import annotations

from dataclasses import dataclass


class JPEGError(ValueError):
    """Not a JPEG stream we can read, or one JPEG Baseline cannot carry as it is."""


#: SOF markers → process name (T.81 Table B.1)
_SOF = {
    0xC0: "baseline",
    0xC1: "extended sequential",
    0xC2: "progressive",
    0xC3: "lossless",
    0xC5: "differential sequential",
    0xC6: "differential progressive",
    0xC7: "differential lossless",
    0xC9: "extended sequential (arithmetic)",
    0xCA: "progressive (arithmetic)",
    0xCB: "lossless (arithmetic)",
    0xCD: "differential sequential (arithmetic)",
    0xCE: "differential progressive (arithmetic)",
    0xCF: "differential lossless (arithmetic)",
}


@dataclass(frozen=True)
class JPEGInfo:
    process: str
    sof: int
    precision: int
    rows: int
    columns: int
    components: int
    photometric: str
    subsampled: bool

    @property
    def baseline(self) -> bool:
        """Encapsulable as it is in 1.2.840.10008.1.2.4.50: SOF0, 8 bits, 1 or 3 components."""
        return self.sof == 0xC0 and self.precision == 8 and self.components in (1, 3)


def read_jpeg_info(data: bytes) -> JPEGInfo:
    """Walk the markers up to the first SOF (T.81 §B.1.1); raise JPEGError if there is none."""
    if data[:2] != b"\xff\xd8":
        raise JPEGError("not a JPEG stream (no SOI marker)")
    pos = 2
    adobe_transform: int | None = None
    jfif = False
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise JPEGError(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            raise JPEGError("corrupt JPEG: segment runs past the end of the file")
        seg = data[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and seg[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe_transform = seg[11]
        elif marker in _SOF:
            if len(seg) < 6:
                raise JPEGError("corrupt JPEG: short frame header")
            precision = seg[0]
            rows = int.from_bytes(seg[1:3], "big")
            cols = int.from_bytes(seg[3:5], "big")
            ncomp = seg[5]
            if len(seg) < 6 + 3 * ncomp:
                raise JPEGError("corrupt JPEG: short frame header")
            comps = [seg[6 + 3 * i : 9 + 3 * i] for i in range(ncomp)]
            ids = bytes(c[0] for c in comps)
            factors = [(c[1] >> 4, c[1] & 0x0F) for c in comps]
            subsampled = ncomp == 3 and len(set(factors)) > 1
            if rows == 0:
                raise JPEGError("JPEG with a DNL-defined height is not supported")
            if ncomp == 1:
                photometric = "MONOCHROME2"
            elif ncomp == 3 and (adobe_transform == 0 or (ids == b"RGB" and not jfif)):
                photometric = "RGB"
            elif ncomp == 3:
                photometric = "YBR_FULL_422"
            else:
                photometric = "CMYK" if ncomp == 4 else f"{ncomp} components"
            return JPEGInfo(
                _SOF[marker], marker, precision, rows, cols, ncomp, photometric, subsampled
            )
        elif marker == 0xDA:
            break
        pos += 2 + length
    raise JPEGError("corrupt JPEG: no frame header (SOF) found")


def jpeg_stream(data: bytes) -> bytes:
    """The JPEG stream proper: up to and including EOI (trailing bytes some cameras append,
    e.g. a second preview stream, are dropped so the fragment holds exactly one image)."""
    end = data.rfind(b"\xff\xd9")
    if end < 0:
        raise JPEGError("corrupt JPEG: no EOI marker")
    return data[: end + 2]
