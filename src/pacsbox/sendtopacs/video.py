"""Video files → an MPEG-2 or H.264 elementary stream for the DICOM video transfer syntaxes
(PS3.5 §8.2.5 MPEG-2 MP@ML, §8.2.6 MP@HL, §8.2.7 H.264 High Profile / Level 4.1 and
BD-compatible, §8.2.8 H.264 High Profile / Level 4.2), with PyAV (FFmpeg).

A stream that already fits a syntax is *remuxed* (the coded pictures are copied, only the
container changes: MP4/MOV length-prefixed NAL units become an Annex-B byte stream); anything
else is *transcoded* to the configured format (default H.264 High Profile / Level 4.1).
The whole stream goes into one fragment with an empty Basic Offset Table (PS3.5 §A.4).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pacsbox.sendtopacs.sopclasses import (
    H264_BD,
    H264_HP41,
    H264_HP42_2D,
    MPEG2_MPHL,
    MPEG2_MPML,
    VIDEO_FORMATS,
)


class VideoError(ValueError):
    """The file is not a readable video, or cannot be brought to the requested format."""


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    profile: str
    level: int
    width: int
    height: int
    fps: Fraction
    pix_fmt: str


@dataclass
class VideoStream:
    transfer_syntax: str
    data: bytes
    frames: int
    width: int
    height: int
    fps: Fraction
    remuxed: bool  #: True: the coded pictures are the source's, byte for byte
    source: VideoInfo


_H264_SUBSET_PROFILES = {"High", "Main", "Constrained Baseline"}
#: BD-compatible (PS3.5 §8.2.7): 1920x1080 at 25 / 29.97 (fields) or 23.976 / 24, 1280x720
#: at 23.976 / 24 / 50 / 59.94
_BD_RATES = {
    (1920, 1080): {Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001)},
    (1280, 720): {Fraction(24000, 1001), Fraction(24), Fraction(50), Fraction(60000, 1001)},
}


def probe(path: Path) -> VideoInfo:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path.name}: no video stream")
            stream = container.streams.video[0]
            cc = stream.codec_context
            fps = stream.average_rate or stream.guessed_rate or Fraction(25)
            return VideoInfo(
                cc.name,
                str(cc.profile or ""),
                int(getattr(cc, "level", 0) or 0),
                int(cc.width),
                int(cc.height),
                Fraction(fps),
                str(cc.pix_fmt or ""),
            )
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path.name}: not a readable video ({exc})") from exc


def fits(info: VideoInfo, ts: str) -> bool:
    """Can the stream go into ``ts`` without re-encoding (profile, level, size, rate)?"""
    if info.pix_fmt not in ("yuv420p", "yuvj420p"):
        return False
    pixels = info.width * info.height
    if ts in (H264_HP41, H264_HP42_2D, H264_BD):
        if info.codec != "h264" or info.profile not in _H264_SUBSET_PROFILES:
            return False
        if info.width > 1920 or info.height > 1080:
            return False
        if ts == H264_HP41:
            return 0 < info.level <= 41 and info.fps <= (30 if pixels > 1280 * 720 else 60)
        if ts == H264_HP42_2D:
            return 0 < info.level <= 42 and info.fps <= 60
        rates = _BD_RATES.get((info.width, info.height))
        return 0 < info.level <= 41 and rates is not None and info.fps in rates
    if ts in (MPEG2_MPML, MPEG2_MPHL):
        if info.codec != "mpeg2video" or info.profile != "Main":
            return False
        if ts == MPEG2_MPML:
            return info.level == 8 and info.width <= 720 and info.height <= 576
        return info.level in (4, 6) and info.width <= 1920 and info.height <= 1152
    return False


def choose(info: VideoInfo, video_format: str = "auto", fallback: str = "h264-hp41") -> str:
    """The transfer syntax for a source: "auto" keeps a stream that fits one (H.264 first, then
    MPEG-2), else the ``fallback`` format; a named format is used as asked."""
    if video_format != "auto":
        return _format_ts(video_format)
    for ts in (H264_HP41, H264_HP42_2D, MPEG2_MPML, MPEG2_MPHL):
        if fits(info, ts):
            return ts
    return _format_ts(fallback)


def _format_ts(name: str) -> str:
    if name in VIDEO_FORMATS:
        return VIDEO_FORMATS[name]
    if name in VIDEO_FORMATS.values():
        return name
    raise VideoError(f"unknown video format {name!r} (auto, {', '.join(VIDEO_FORMATS)})")


def convert_video(
    path: Path, video_format: str = "auto", fallback: str = "h264-hp41"
) -> VideoStream:
    """The elementary stream for ``path`` in the chosen transfer syntax."""
    info = probe(path)
    ts = choose(info, video_format, fallback)
    if fits(info, ts):
        return _remux(path, info, ts)
    return _transcode(path, info, ts)


def _remux(path: Path, info: VideoInfo, ts: str) -> VideoStream:
    import av

    fmt = "h264" if info.codec == "h264" else "mpeg2video"
    buf = io.BytesIO()
    frames = 0
    with av.open(str(path)) as inp:
        vin = inp.streams.video[0]
        out = av.open(buf, "w", format=fmt)
        try:
            vout = out.add_stream_from_template(vin)
            for packet in inp.demux(vin):
                if packet.dts is None and packet.size == 0:
                    continue  # the demuxer's flush packet
                packet.stream = vout
                out.mux(packet)
                frames += 1
        finally:
            out.close()
    if not frames:
        raise VideoError(f"{path.name}: the video stream holds no pictures")
    return VideoStream(ts, buf.getvalue(), frames, info.width, info.height, info.fps, True, info)


def _target_geometry(info: VideoInfo, ts: str) -> tuple[int, int, Fraction]:
    """Scale down (keeping the aspect ratio, even sizes) and cap the frame rate so the result
    fits the syntax's level."""
    if ts == MPEG2_MPML:
        max_w, max_h, max_fps = 720, 576, Fraction(30)
    elif ts in (H264_BD,):
        max_w, max_h = (1920, 1080) if info.height > 720 else (1280, 720)
        max_fps = Fraction(25) if max_h == 1080 else Fraction(50)
        return max_w, max_h, max_fps
    else:
        max_w, max_h, max_fps = 1920, 1080, Fraction(60)
    scale = min(1.0, max_w / info.width, max_h / info.height)
    width = max(2, int(info.width * scale) // 2 * 2)
    height = max(2, int(info.height * scale) // 2 * 2)
    fps = min(info.fps, max_fps) if info.fps > 0 else Fraction(25)
    if ts == H264_HP41 and width * height > 1280 * 720:
        fps = min(fps, Fraction(30))
    if ts in (MPEG2_MPML, MPEG2_MPHL):
        # MPEG-2 allows only the standard frame rates (ISO/IEC 13818-2 Table 6-4)
        allowed = [
            Fraction(24000, 1001),
            Fraction(24),
            Fraction(25),
            Fraction(30000, 1001),
            Fraction(30),
            Fraction(50),
            Fraction(60000, 1001),
            Fraction(60),
        ]
        allowed = [a for a in allowed if a <= max_fps]
        fps = min(allowed, key=lambda a: abs(a - fps))
    return width, height, fps


def _transcode(path: Path, info: VideoInfo, ts: str) -> VideoStream:
    import av

    width, height, fps = _target_geometry(info, ts)
    if ts in (MPEG2_MPML, MPEG2_MPHL):
        codec, fmt = "mpeg2video", "mpeg2video"
        options = {"profile": "4", "level": "8" if ts == MPEG2_MPML else "4"}
        bit_rate = 8_000_000 if ts == MPEG2_MPML else 20_000_000
    else:
        codec, fmt = "libx264", "h264"
        level = "4.2" if ts == H264_HP42_2D else "4.1"
        options = {"profile": "high", "level": level, "preset": "veryfast", "crf": "20"}
        if ts == H264_BD:
            options["x264-params"] = "bluray-compat=1:vbv-maxrate=40000:vbv-bufsize=30000"
        bit_rate = 0
    buf = io.BytesIO()
    frames = 0
    step = 1 / float(fps)
    try:
        with av.open(str(path)) as inp:
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            out = av.open(buf, "w", format=fmt)
            try:
                vout = out.add_stream(codec, rate=fps)
                vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
                if bit_rate:  # MPEG-2: stay inside the level's rate and VBV buffer
                    vout.bit_rate = bit_rate
                    options = {**options, "maxrate": str(bit_rate), "bufsize": str(bit_rate)}
                vout.options = options
                next_t = 0.0
                for frame in inp.decode(vin):
                    t = float(frame.time) if frame.time is not None else next_t
                    if t + 1e-6 < next_t:  # frame-rate reduction: drop this one
                        continue
                    next_t = max(next_t + step, t + step / 2) if frames else t + step
                    img = frame.reformat(width=width, height=height, format="yuv420p")
                    img.pts = frames
                    img.time_base = Fraction(1) / fps
                    for packet in vout.encode(img):
                        out.mux(packet)
                    frames += 1
                for packet in vout.encode():
                    out.mux(packet)
            finally:
                out.close()
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path.name}: transcoding failed ({exc})") from exc
    if not frames:
        raise VideoError(f"{path.name}: the video stream holds no pictures")
    return VideoStream(ts, buf.getvalue(), frames, width, height, fps, False, info)
