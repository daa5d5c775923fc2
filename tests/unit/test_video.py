"""archive/video.py: stored DICOM video streams become browser-playable MP4 (SPEC E5):
H.264 remuxed with its coded pictures byte for byte and presentation order recovered (B
frames), MPEG-2 transcoded to H.264, fragments extracted from encapsulated Pixel Data."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pacsbox.archive.video import (
    VideoRenderError,
    cache_path,
    extract_stream,
    frame_rate,
    to_mp4,
)
from pacsbox.sendtopacs.video import convert_video
from tests.unit.test_sendtopacs_convert import _video

H264 = "1.2.840.10008.1.2.4.102"
MPEG2 = "1.2.840.10008.1.2.4.100"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    _video(path, "libx264", opts={"profile": "high", "bf": "3"}, n=30)  # with B frames
    return path


def _gray_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray") for f in c.decode(video=0)]


def test_h264_remux_keeps_pictures_and_their_order(clip: Path, tmp_path: Path) -> None:
    stream = convert_video(clip)
    assert stream.transfer_syntax == H264 and stream.remuxed
    raw = tmp_path / "stream.h264"
    raw.write_bytes(stream.data)
    out = tmp_path / "out.mp4"
    assert to_mp4(raw, H264, out, Fraction(25)) == 30
    source, result = _gray_frames(clip), _gray_frames(out)
    assert len(result) == 30
    assert all(np.array_equal(a, b) for a, b in zip(source, result, strict=True))
    with av.open(str(out)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
        assert c.streams.video[0].codec_context.name == "h264"
        assert float(c.streams.video[0].average_rate) == pytest.approx(25, rel=0.01)
    # B frames: decode order differs from presentation order, and pts >= dts throughout
    assert [p.pts for p in packets] != sorted(p.pts for p in packets)
    assert all(p.pts >= p.dts for p in packets)


def test_mpeg2_is_transcoded_to_h264(clip: Path, tmp_path: Path) -> None:
    stream = convert_video(clip, video_format="mpeg2-mpml")
    assert stream.transfer_syntax == MPEG2
    raw = tmp_path / "stream.m2v"
    raw.write_bytes(stream.data)
    out = tmp_path / "out.mp4"
    assert to_mp4(raw, MPEG2, out, None) == stream.frames
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert len(list(c.decode(video=0))) == stream.frames


def test_garbage_stream_is_a_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "junk.h264"
    raw.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(VideoRenderError):
        to_mp4(raw, H264, tmp_path / "out.mp4", None)


def _item(data: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data


def test_extract_stream_skips_the_offset_table_and_joins_fragments() -> None:
    body = _item(struct.pack("<I", 0)) + _item(b"abcd") + _item(b"efgh12")
    body += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    out = io.BytesIO()
    assert extract_stream(io.BytesIO(body), out) == 10
    assert out.getvalue() == b"abcdefgh12"
    with pytest.raises(VideoRenderError):
        extract_stream(io.BytesIO(body[:-8]), io.BytesIO())  # no sequence delimiter
    with pytest.raises(VideoRenderError):
        extract_stream(io.BytesIO(_item(b"") + _item(b"ab")[:-1]), io.BytesIO())


@pytest.mark.parametrize(
    ("cine", "frame_time", "recommended", "expected"),
    [
        ("30", None, None, Fraction(30)),
        (None, "40", None, Fraction(25)),
        (None, "33.3667", None, Fraction(30000, 1001)),
        ("", "0", "24", Fraction(24)),
        ("x", "-1", None, None),
    ],
)
def test_frame_rate(cine: object, frame_time: object, recommended: object, expected) -> None:  # noqa: ANN001
    assert frame_rate(cine, frame_time, recommended) == expected


def test_cache_path_stays_in_the_cache(tmp_path: Path) -> None:
    assert cache_path(tmp_path, "1.2/3.4/5.6.dcm") == tmp_path / "1.2" / "3.4" / "5.6.mp4"
    linked = cache_path(tmp_path, "/mnt/old/x.dcm")
    assert linked.parent == tmp_path / "linked"
    assert tmp_path in cache_path(tmp_path, "../../etc/passwd").parents
