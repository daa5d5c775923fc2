"""Stored video → an MP4 file a browser's ``<video>`` element plays (SPEC E5 video playback;
PS3.18 §10.4.1.1.3 rendered resources, media type video/mp4 per Table 8.7.4-1).

DICOM video instances (PS3.5 §8.2.5–§8.2.8, §A.4.x) hold an MPEG-2 or MPEG-4 AVC/H.264 or
HEVC/H.265 stream in the encapsulated Pixel Data, without a container or timestamps:

- **H.264** is *remuxed*: the coded pictures are copied byte for byte into an MP4
  (``movflags=+faststart``). A raw elementary stream carries no presentation times, so they
  are recovered by decoding once: packets are numbered in decode order, the decoder returns
  pictures in presentation order carrying the number of the packet they came from, and each
  packet then gets its presentation and decode time stamps from those two orders.
- **MPEG-2 and HEVC** are *transcoded* to H.264 (libx264, yuv420p, CRF 20): browsers do not
  play MPEG-2, and HEVC only with platform decoders.

The frame rate comes from the data set (Cine Rate, else Frame Time, else Recommended Display
Frame Rate), else the stream's own, else 25.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

MPEG2_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"})
H264_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
    }
)
HEVC_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"})
VIDEO_SYNTAXES = MPEG2_SYNTAXES | H264_SYNTAXES | HEVC_SYNTAXES
_DEMUXER = {**dict.fromkeys(MPEG2_SYNTAXES, "mpegvideo"), **dict.fromkeys(HEVC_SYNTAXES, "hevc")}


_NTSC_RATES = (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001))


class VideoRenderError(ValueError):
    """The stored stream cannot be turned into an MP4 (damaged, or no picture in it)."""


def frame_rate(cine_rate: object, frame_time: object, recommended: object) -> Fraction | None:
    """Frames per second from Cine Rate (0018,0040), Frame Time (0018,1063, ms) or
    Recommended Display Frame Rate (0008,2144); None when none is usable."""
    for value, per_ms in ((cine_rate, False), (frame_time, True), (recommended, False)):
        try:
            number = Fraction(str(value).strip()) if value not in (None, "") else None
        except (ValueError, ZeroDivisionError):
            number = None
        if number and number > 0:
            fps = Fraction(1000) / number if per_ms else number
            if 0 < fps <= 240:
                for ntsc in _NTSC_RATES:  # 29.97 given as 33.3667 ms is 30000/1001
                    if abs(fps - ntsc) / ntsc < Fraction(1, 1000):
                        return ntsc
                return fps.limit_denominator(1000)
    return None


def _open(stream: Path, transfer_syntax: str, fps: Fraction) -> Any:
    import av

    fmt = _DEMUXER.get(transfer_syntax, "h264")
    try:
        return av.open(str(stream), format=fmt, options={"framerate": str(fps)})
    except av.error.FFmpegError:
        # not a raw elementary stream (e.g. an MPEG-2 program or transport stream): probe
        return av.open(str(stream))


def extract_stream(fh: BinaryIO, target: BinaryIO, little_endian: bool = True) -> int:
    """Copy the fragments of the encapsulated Pixel Data whose value starts at ``fh``'s
    position (the first item, PS3.5 §A.4: Basic Offset Table, then fragments, then the
    sequence delimiter) to ``target``, without holding the stream in memory. Returns bytes."""
    endian = "<" if little_endian else ">"
    first, total = True, 0
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise VideoRenderError("the encapsulated pixel data is truncated")
        group, elem, length = struct.unpack(f"{endian}HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return total
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise VideoRenderError("the encapsulated pixel data is malformed")
        if first:  # the Basic Offset Table
            fh.seek(length, os.SEEK_CUR)
            first = False
            continue
        remaining = length
        while remaining:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                raise VideoRenderError("the encapsulated pixel data is truncated")
            target.write(chunk)
            remaining -= len(chunk)
        total += length


def to_mp4(stream: Path, transfer_syntax: str, target: Path, fps: Fraction | None) -> int:
    """Write ``stream`` (a file holding the concatenated Pixel Data fragments) as MP4 to
    ``target``; returns the number of pictures. Raises :class:`VideoRenderError`."""
    import av

    rate = fps or Fraction(25)
    try:
        if transfer_syntax in H264_SYNTAXES:
            return _remux_h264(stream, transfer_syntax, target, rate)
        return _transcode(stream, transfer_syntax, target, rate)
    except av.error.FFmpegError as exc:
        raise VideoRenderError(f"the stored video cannot be read: {exc}") from exc


def _presentation_order(stream: Path, transfer_syntax: str, fps: Fraction) -> list[int]:
    """For each packet (decode order) the index of its picture in presentation order."""
    with _open(stream, transfer_syntax, fps) as inp:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        shown: list[int] = []
        count = 0
        for packet in inp.demux(vin):
            if not packet.size:
                continue  # the demuxer's end marker: flushed below
            packet.pts = packet.dts = count
            count += 1
            for frame in vin.codec_context.decode(packet):
                shown.append(int(frame.pts))
        for frame in vin.codec_context.decode(None):
            shown.append(int(frame.pts))
    order = [-1] * count
    for presented, decoded in enumerate(shown):
        if 0 <= decoded < count and order[decoded] < 0:
            order[decoded] = presented
    return order


def _remux_h264(stream: Path, transfer_syntax: str, target: Path, fps: Fraction) -> int:
    import av

    order = _presentation_order(stream, transfer_syntax, fps)
    if not order or all(p < 0 for p in order):
        raise VideoRenderError("the stored video holds no picture")
    # a packet never presented (damaged) keeps its decode position
    order = [p if p >= 0 else i for i, p in enumerate(order)]
    delay = max(0, max(i - p for i, p in enumerate(order)))  # keeps pts >= dts
    time_base = 1 / fps
    with _open(stream, transfer_syntax, fps) as inp:
        vin = inp.streams.video[0]
        with av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            vout = out.add_stream_from_template(vin)
            vout.time_base = time_base
            index = 0
            for packet in inp.demux(vin):
                if not packet.size:
                    continue
                if index >= len(order):
                    break
                packet.stream = vout
                packet.time_base = time_base
                packet.dts = index
                packet.pts = order[index] + delay
                packet.duration = 1
                out.mux(packet)
                index += 1
    return len(order)


def _transcode(stream: Path, transfer_syntax: str, target: Path, fps: Fraction) -> int:
    import av

    frames = 0
    with _open(stream, transfer_syntax, fps) as inp:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        with av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            vout = out.add_stream("libx264", rate=fps)
            vout.pix_fmt = "yuv420p"
            vout.options = {"preset": "veryfast", "crf": "20", "profile": "high"}
            for frame in inp.decode(vin):
                if not frames:
                    vout.width, vout.height = frame.width // 2 * 2, frame.height // 2 * 2
                img = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
                img.pts, img.time_base = frames, 1 / fps
                for packet in vout.encode(img):
                    out.mux(packet)
                frames += 1
            if frames:
                for packet in vout.encode(None):
                    out.mux(packet)
    if not frames:
        raise VideoRenderError("the stored video holds no picture")
    return frames


# -- the MP4 cache -----------------------------------------------------------------------------
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def cache_root_for(store_root: Path) -> Path:
    """The video cache beside the storage folder: ``<data>/cache/video``."""
    return Path(store_root).parent / "cache" / "video"


def cache_path(cache_root: Path, key: str) -> Path:
    """Where the MP4 of the stored instance ``key`` is cached (``<data>/cache/video``); keys of
    instances imported in place (absolute paths) are hashed."""
    if os.path.isabs(key) or ".." in key.split("/"):
        key = "linked/" + hashlib.sha256(key.encode()).hexdigest()
    return cache_root.joinpath(*key.split("/")).with_suffix(".mp4")


def remove_cached(cache_root: Path, key: str) -> None:
    """Drop the cached MP4 of ``key`` (called when the instance is deleted)."""
    cache_path(cache_root, key).unlink(missing_ok=True)


def cached_mp4(
    source: Path, key: str, transfer_syntax: str, cache_root: Path, tmp_dir: Path
) -> Path:
    """The MP4 rendering of the stored video instance at ``source``, made once and cached;
    remade when the stored file is newer (a replaced instance). One conversion per instance
    at a time within a process."""
    from pydicom import dcmread

    target = cache_path(cache_root, key)
    with _locks_guard:
        lock = _locks.setdefault(str(target), threading.Lock())
    with lock:
        try:
            if target.stat().st_mtime >= source.stat().st_mtime:
                return target
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        raw = tmp_dir / f"video-{os.getpid()}-{threading.get_ident()}.es"
        part = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(source, "rb") as fh:
                header = dcmread(fh, stop_before_pixels=True, force=True)
                ts = transfer_syntax
                if ts not in VIDEO_SYNTAXES:
                    raise VideoRenderError(f"transfer syntax {ts or '?'} is not a video syntax")
                tag = fh.read(12)  # (7FE0,0010) OB 00 00 FFFFFFFF: explicit VR little endian
                if len(tag) < 12 or tag[:4] != b"\xe0\x7f\x10\x00":
                    raise VideoRenderError("the object has no encapsulated pixel data")
                with open(raw, "wb") as out:
                    extract_stream(fh, out)
            fps = frame_rate(
                header.get("CineRate"),
                header.get("FrameTime"),
                header.get("RecommendedDisplayFrameRate"),
            )
            to_mp4(raw, ts, part, fps)
            os.replace(part, target)
        finally:
            raw.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
    return target


def decode_frame(fh: BinaryIO, transfer_syntax: str, index: int) -> Any:
    """Picture ``index`` (0-based, presentation order) of the video whose encapsulated Pixel
    Data value starts at ``fh``'s position, as an RGB array (rows, columns, 3). The stream is
    copied to a temporary file (bounded memory; PyAV cannot read a SpooledTemporaryFile)
    and decoded up to that picture."""
    import tempfile

    import av

    with tempfile.TemporaryFile() as spool:
        extract_stream(fh, spool)
        spool.seek(0)
        fmt = _DEMUXER.get(transfer_syntax, "h264")
        try:
            with av.open(spool, format=fmt) as inp:
                vin = inp.streams.video[0]
                vin.thread_type = "AUTO"
                for n, picture in enumerate(inp.decode(vin)):
                    if n == index:
                        return picture.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise VideoRenderError(f"the stored video cannot be decoded: {exc}") from exc
    raise VideoRenderError(f"the stored video has no picture {index + 1}")
