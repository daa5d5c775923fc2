"""sendtopacs converter (SPEC S1): every kind of input becomes a DICOM object that dciodvfy
accepts without errors, JPEG / PDF / fitting H.264 content is carried unchanged, other video
is transcoded, and UIDs, patient data, character set and settings behave as documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames

from pacsbox.sendtopacs import sopclasses as sc
from pacsbox.sendtopacs.convert import Converter, ConvertError, ConvertOptions
from pacsbox.sendtopacs.jpeg import read_jpeg_info
from pacsbox.sendtopacs.patient import PatientInfo, PatientInfoError
from pacsbox.sendtopacs.settings import Device, Settings, SettingsError, load

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

DCIODVFY = shutil.which("dciodvfy")
IN_CI = os.environ.get("CI", "").lower() == "true"


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's exit code is unreliable (notes): any output line starting with Error fails."""
    if DCIODVFY is None:
        if IN_CI:
            pytest.fail("dciodvfy (dicom3tools) is required in CI")
        pytest.skip("dciodvfy not installed")
    res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def _rgb(h: int = 240, w: int = 320) -> np.ndarray:
    yy, xx = np.indices((h, w))
    return np.stack([(xx + yy) % 256, (xx * 2) % 256, (yy * 3) % 256], -1).astype(np.uint8)


def _video(
    path: Path,
    codec: str,
    fmt: str | None = None,
    opts: dict | None = None,
    n: int = 20,
    size: tuple[int, int] = (320, 240),
) -> None:
    out = av.open(str(path), "w", format=fmt)
    stream = out.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    if opts:
        stream.options = opts
    base = _rgb(size[1], size[0])
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.roll(base, i * 4, 1).copy(), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    rgb = _rgb()
    Image.fromarray(rgb).save(d / "photo.jpg", quality=85)  # 4:2:0 JFIF
    Image.fromarray(rgb).save(d / "full.jpg", quality=85, subsampling=0)  # 4:4:4
    Image.fromarray(rgb[..., 0]).save(d / "grey.jpg", quality=85)
    Image.fromarray(rgb).save(d / "prog.jpg", quality=85, progressive=True)
    Image.fromarray(rgb).save(d / "scan.png")
    Image.fromarray(rgb).save(d / "scan.bmp")
    Image.fromarray(rgb).convert("P").save(d / "scan.gif")
    pages = [Image.fromarray(np.roll(rgb, i * 30, 0)) for i in range(3)]
    pages[0].save(d / "three.tif", save_all=True, append_images=pages[1:])
    (d / "report.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]"
        b"/Count 1>>endobj\n3 0 obj<</Type/Page/MediaBox[0 0 3 3]>>endobj\ntrailer<</Root 1 0 R"
        b">>\n%%EOF\r\n"  # odd length on purpose: the pad byte must not count
    )
    _video(d / "clip.mp4", "libx264", opts={"profile": "high", "level": "4.1"})
    _video(d / "clip.avi", "mpeg4")
    _video(d / "clip.mpg", "mpeg2video", fmt="mpeg", opts={"profile": "4", "level": "8"})
    return d


def patient(**kw: str) -> PatientInfo:
    base = {
        "patient_id": "P001",
        "last_name": "Doe",
        "first_name": "Jane",
        "birth_date": "1970-01-02",
        "sex": "F",
        "accession_number": "ACC1",
    }
    return PatientInfo(**{**base, **kw})


def convert_one(path: Path, tmp_path: Path, **opts: object) -> tuple[Path, object]:
    conv = Converter(patient(), ConvertOptions(**opts))
    items = conv.convert(path)
    assert len(items) == 1
    out = items[0].save(tmp_path)
    assert not dciodvfy_errors(out), dciodvfy_errors(out)
    return out, dcmread(out)


def fragment(ds: object) -> bytes:
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))  # type: ignore[attr-defined]
    assert len(frames) == 1
    return frames[0]


# -- JPEG ---------------------------------------------------------------------------------------
def test_jpeg_stream_is_encapsulated_byte_identical(inputs: Path, tmp_path: Path) -> None:
    src = (inputs / "photo.jpg").read_bytes()
    _out, ds = convert_one(inputs / "photo.jpg", tmp_path)
    assert ds.file_meta.TransferSyntaxUID == sc.JPEG_BASELINE
    assert ds.SOPClassUID == sc.SECONDARY_CAPTURE
    assert fragment(ds).rstrip(b"\x00") == src  # the pad byte (odd length) aside: identical
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (240, 320, 3)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"  # chroma subsampled (PS3.5 §8.2.1)
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert ds.Modality == "OT" and ds.ConversionType == "DI"
    # the pixels decode to the picture Pillow sees
    ref = np.asarray(Image.open(inputs / "photo.jpg").convert("RGB"), dtype=np.int16)
    got = ds.pixel_array.astype(np.int16)  # pydicom converts YBR to RGB
    assert np.abs(got - ref).mean() < 3


@pytest.mark.parametrize(
    ("name", "photometric"), [("full.jpg", "YBR_FULL_422"), ("grey.jpg", "MONOCHROME2")]
)
def test_jpeg_photometric(inputs: Path, tmp_path: Path, name: str, photometric: str) -> None:
    _out, ds = convert_one(inputs / name, tmp_path)
    assert ds.PhotometricInterpretation == photometric
    assert fragment(ds).rstrip(b"\x00") == (inputs / name).read_bytes()


def test_adobe_rgb_jpeg_is_rgb() -> None:
    # SOI, APP14 Adobe with transform 0, SOF0 3 components 1x1 sampling
    app14 = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    sof = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x20\x03\x52\x11\x00\x47\x11\x00\x42\x11\x00"
    info = read_jpeg_info(b"\xff\xd8" + app14 + sof + b"\xff\xd9")
    assert (info.photometric, info.rows, info.columns, info.baseline) == ("RGB", 16, 32, True)


def test_progressive_jpeg_reencoded_as_baseline(inputs: Path, tmp_path: Path) -> None:
    _out, ds = convert_one(inputs / "prog.jpg", tmp_path)
    assert ds.file_meta.TransferSyntaxUID == sc.JPEG_BASELINE
    assert read_jpeg_info(fragment(ds)).baseline
    assert "progressive" in ds.DerivationDescription


def test_twelve_bit_jpeg_refused_clearly(tmp_path: Path) -> None:
    sof1 = b"\xff\xc1\x00\x0b\x0c\x00\x10\x00\x10\x01\x01\x11\x00"
    path = tmp_path / "ct.jpg"
    path.write_bytes(b"\xff\xd8" + sof1 + b"\xff\xd9")
    with pytest.raises(ConvertError, match="12-bit extended sequential JPEG"):
        Converter(patient()).convert(path)


def test_jpeg_option_for_png(inputs: Path, tmp_path: Path) -> None:
    _out, ds = convert_one(inputs / "scan.png", tmp_path, image_encoding="jpeg")
    assert ds.file_meta.TransferSyntaxUID == sc.JPEG_BASELINE
    assert ds.PhotometricInterpretation == "YBR_FULL_422"


# -- native images ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["scan.png", "scan.bmp", "scan.gif"])
def test_png_bmp_gif_native(inputs: Path, tmp_path: Path, name: str) -> None:
    _out, ds = convert_one(inputs / name, tmp_path)
    assert ds.file_meta.TransferSyntaxUID == sc.EXPLICIT_LE
    assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8
    ref = np.asarray(Image.open(inputs / name).convert("RGB"))
    assert np.array_equal(ds.pixel_array, ref)


def test_tiff_three_pages_multiframe(inputs: Path, tmp_path: Path) -> None:
    _out, ds = convert_one(inputs / "three.tif", tmp_path)
    assert ds.SOPClassUID == sc.MULTIFRAME_TRUE_COLOR_SC
    assert ds.NumberOfFrames == 3
    assert ds.FrameIncrementPointer == 0x00182001 and list(ds.PageNumberVector) == [1, 2, 3]
    img = Image.open(inputs / "three.tif")
    for i in range(3):
        img.seek(i)
        assert np.array_equal(ds.pixel_array[i], np.asarray(img.convert("RGB")))


def test_tiff_split_one_object_per_page(inputs: Path, tmp_path: Path) -> None:
    conv = Converter(patient(), ConvertOptions(tiff_split=True, sop_class=sc.SECONDARY_CAPTURE))
    items = conv.convert(inputs / "three.tif")
    assert [int(i.dataset.InstanceNumber) for i in items] == [1, 2, 3]
    for item in items:
        assert not dciodvfy_errors(item.save(tmp_path))


# -- PDF --------------------------------------------------------------------------------------
def test_pdf_bytes_identical(inputs: Path, tmp_path: Path) -> None:
    src = (inputs / "report.pdf").read_bytes()
    assert len(src) % 2 == 1
    _out, ds = convert_one(inputs / "report.pdf", tmp_path)
    assert ds.SOPClassUID == sc.ENCAPSULATED_PDF and ds.Modality == "DOC"
    assert ds.EncapsulatedDocumentLength == len(src)
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == src
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"


def test_not_a_pdf_refused(tmp_path: Path) -> None:
    bad = tmp_path / "fake.pdf"
    bad.write_bytes(b"hello")
    with pytest.raises(ConvertError, match="not a PDF"):
        Converter(patient()).convert(bad)


# -- video ------------------------------------------------------------------------------------
def _nals_annexb(data: bytes) -> list[bytes]:
    parts = data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
    return [p.rstrip(b"\x00") for p in parts if p]


def _slice_nals(nals: list[bytes]) -> list[bytes]:
    return [n for n in nals if n and n[0] & 0x1F in (1, 5)]


def test_h264_mp4_remuxed_not_reencoded(inputs: Path, tmp_path: Path) -> None:
    _out, ds = convert_one(inputs / "clip.mp4", tmp_path)
    assert ds.file_meta.TransferSyntaxUID == sc.H264_HP41
    assert ds.SOPClassUID == sc.VIDEO_PHOTOGRAPHIC and ds.Modality == "XC"
    assert ds.NumberOfFrames == 20 and (ds.Rows, ds.Columns) == (240, 320)
    assert float(ds.FrameTime) == pytest.approx(40.0)
    # the MP4's coded slices (length-prefixed NAL units) are in the fragment byte for byte
    mp4_slices: list[bytes] = []
    with av.open(str(inputs / "clip.mp4")) as container:
        for packet in container.demux(video=0):
            raw = bytes(packet)
            pos = 0
            while pos + 4 <= len(raw):
                size = int.from_bytes(raw[pos : pos + 4], "big")
                mp4_slices.append(raw[pos + 4 : pos + 4 + size])
                pos += 4 + size
    mp4_slices = _slice_nals(mp4_slices)
    assert len(mp4_slices) >= 20
    assert _slice_nals(_nals_annexb(fragment(ds))) == [s.rstrip(b"\x00") for s in mp4_slices]


def test_avi_mpeg4_part2_transcoded(inputs: Path, tmp_path: Path) -> None:
    out, ds = convert_one(inputs / "clip.avi", tmp_path)
    assert ds.file_meta.TransferSyntaxUID == sc.H264_HP41
    stream = tmp_path / "stream.h264"
    stream.write_bytes(fragment(ds))
    with av.open(str(stream), format="h264") as container:
        vs = container.streams.video[0]
        assert vs.codec_context.profile == "High"
        frames = list(container.decode(vs))
    assert len(frames) == ds.NumberOfFrames == 20
    assert (frames[0].width, frames[0].height) == (320, 240)


def test_mpeg2_program_stream_remuxed_and_forced_format(inputs: Path, tmp_path: Path) -> None:
    _out, ds = convert_one(inputs / "clip.mpg", tmp_path)
    assert ds.file_meta.TransferSyntaxUID == sc.MPEG2_MPML
    _out, ds = convert_one(inputs / "clip.mp4", tmp_path / "m2", video_format="mpeg2-mpml")
    assert ds.file_meta.TransferSyntaxUID == sc.MPEG2_MPML
    assert ds.LossyImageCompressionMethod == "ISO_13818_2"


def test_video_frame_rate_capped_for_level(tmp_path: Path) -> None:
    from pacsbox.sendtopacs.video import VideoInfo, _target_geometry, choose

    big = VideoInfo("hevc", "Main", 153, 3840, 2160, Fraction(60), "yuv420p")
    assert choose(big) == sc.H264_HP41
    assert _target_geometry(big, sc.H264_HP41) == (1920, 1080, Fraction(30))


@pytest.mark.parametrize(
    ("sop_class", "name", "modality"),
    [
        (sc.VL_ENDOSCOPIC, "photo.jpg", "ES"),
        (sc.VL_PHOTOGRAPHIC, "scan.png", "XC"),
        (sc.VIDEO_ENDOSCOPIC, "clip.mp4", "ES"),
    ],
)
def test_vl_classes(inputs: Path, tmp_path: Path, sop_class: str, name: str, modality: str) -> None:
    _out, ds = convert_one(inputs / name, tmp_path, sop_class=sop_class)
    assert ds.SOPClassUID == sop_class and ds.Modality == modality
    assert len(ds.AnatomicRegionSequence) == 1 and "AcquisitionContextSequence" in ds


# -- UIDs, patient data, character set, extra tags ----------------------------------------------
def test_batch_shares_study_series_per_class_instances_in_order(inputs: Path) -> None:
    conv = Converter(
        patient(),
        ConvertOptions(
            institution_name="Clinic",
            station_name="CAM1",
            additional_tag="(0020,4000)",
            additional_value="left knee",
        ),
    )
    items = conv.convert_all(
        [inputs / "photo.jpg", inputs / "scan.png", inputs / "report.pdf", inputs / "full.jpg"]
    )
    dss = [i.dataset for i in items]
    assert len({d.StudyInstanceUID for d in dss}) == 1
    assert dss[0].SeriesInstanceUID == dss[1].SeriesInstanceUID == dss[3].SeriesInstanceUID
    assert dss[2].SeriesInstanceUID != dss[0].SeriesInstanceUID  # PDF: its own series
    assert [int(d.InstanceNumber) for d in (dss[0], dss[1], dss[3])] == [1, 2, 3]
    assert len({d.SOPInstanceUID for d in dss}) == 4
    d = dss[0]
    assert (d.InstitutionName, d.StationName, d.ImageComments) == ("Clinic", "CAM1", "left knee")
    assert (d.PatientID, str(d.PatientName), d.PatientBirthDate, d.PatientSex) == (
        "P001",
        "Doe^Jane",
        "19700102",
        "F",
    )
    assert "SpecificCharacterSet" not in d  # all ASCII
    other = Converter(patient(study_instance_uid="1.2.3.4")).convert(inputs / "scan.png")
    assert other[0].dataset.StudyInstanceUID == "1.2.3.4"


def test_exif_date_time_original_is_content_date(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(16, 16))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2021:05:06 07:08:09"
    img.save(tmp_path / "cam.jpg", exif=exif)
    ds = Converter(patient()).convert(tmp_path / "cam.jpg")[0].dataset
    assert (ds.ContentDate, ds.ContentTime) == ("20210506", "070809")
    img.save(tmp_path / "noexif.png")
    os.utime(tmp_path / "noexif.png", (1_600_000_000, 1_600_000_000))
    ds = Converter(patient()).convert(tmp_path / "noexif.png")[0].dataset
    import datetime as dt

    assert ds.ContentDate == dt.datetime.fromtimestamp(1_600_000_000).strftime("%Y%m%d")


def test_utf8_when_needed_and_configured_charset_checked(inputs: Path, tmp_path: Path) -> None:
    conv = Converter(patient(last_name="Müller", first_name="Zoë"))
    out = conv.convert(inputs / "scan.png")[0].save(tmp_path)
    ds = dcmread(out)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Müller^Zoë"
    assert not dciodvfy_errors(out)
    latin1 = Converter(patient(last_name="Müller"), ConvertOptions(character_set="ISO_IR 100"))
    assert latin1.convert(inputs / "scan.png")[0].dataset.SpecificCharacterSet == "ISO_IR 100"
    greek = Converter(patient(last_name="Δοκιμή"), ConvertOptions(character_set="ISO_IR 100"))
    with pytest.raises(ConvertError, match="cannot be written in character set ISO_IR 100"):
        greek.convert(inputs / "scan.png")


def test_patient_validation_lists_every_problem() -> None:
    info = PatientInfo(
        patient_id="X" * 65,
        last_name="",
        birth_date="1970-02-30",
        sex="Q",
        accession_number="A" * 17,
        study_time="25:00",
    )
    with pytest.raises(PatientInfoError) as exc:
        info.validate()
    text = str(exc.value)
    for needle in (
        "patient id: longer than 64",
        "last name: required",
        "birth date",
        "sex",
        "accession number: longer than 16",
        "study time",
    ):
        assert needle in text
    ok = PatientInfo(patient_id="1", birth_date="1970-01-02", sex="female")
    ok.set_name("Doe^John^Q^Dr^Jr")
    ok.validate()
    assert (ok.patient_name, ok.birth_date, ok.sex) == ("Doe^John^Q^Dr^Jr", "19700102", "F")


def test_extension_table_and_unknown_sop_class(inputs: Path) -> None:
    table = sc.default_table()
    assert sc.resolve(table, ".jpg", "image") == sc.SECONDARY_CAPTURE
    assert sc.resolve(table, ".TIF", "image") == sc.MULTIFRAME_TRUE_COLOR_SC
    assert sc.resolve(table, ".pdf", "pdf") == sc.ENCAPSULATED_PDF
    assert sc.resolve(table, ".mov", "video") == sc.VIDEO_PHOTOGRAPHIC
    custom = [sc.SopClassEntry("1.2.826.0.1.3680043.9.9999.1", "private", ("png",)), *table]
    assert sc.resolve(custom, ".png", "image") == "1.2.826.0.1.3680043.9.9999.1"
    ds = Converter(patient(), ConvertOptions(table=custom)).convert(inputs / "scan.png")[0]
    assert ds.dataset.SOPClassUID == "1.2.826.0.1.3680043.9.9999.1"
    assert ds.dataset.ConversionType == "DI"  # carries Secondary Capture content
    with pytest.raises(ConvertError, match="video SOP class"):
        Converter(patient(), ConvertOptions(sop_class=sc.SECONDARY_CAPTURE)).convert(
            inputs / "clip.mp4"
        )


def test_settings_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "sendtopacs.json"
    s = load(path)  # missing → defaults
    assert s.ae_title == "SENDTOPACS" and not s.devices
    s.add_device(Device("pacs", "PACS1", "127.0.0.1", 104, files_per_association=5))
    s.add_device(
        Device("dec", "OLD", "127.0.0.1", 105, decompress=True, character_set="ISO_IR 100")
    )
    s.institution_name = "Clinic"
    s.save(path)
    data = json.loads(path.read_text())
    data["future_section"] = {"kept": True}
    path.write_text(json.dumps(data))
    again = load(path)
    assert again.device().name == "pacs"  # the first one became the default
    assert again.device("DEC").decompress and again.device("dec").character_set == "ISO_IR 100"
    assert again.convert_options(again.device("dec")).character_set == "ISO_IR 100"
    again.set_default("dec")
    again.save()
    assert json.loads(path.read_text())["future_section"] == {"kept": True}
    assert load(path).device().name == "dec"
    with pytest.raises(SettingsError, match="unknown device"):
        again.device("nope")
    with pytest.raises(SettingsError, match="port"):
        Device("x", "AE", "h", 70000).validate()
    path.write_text("{not json")
    with pytest.raises(SettingsError, match="cannot read settings"):
        load(path)
    assert isinstance(Settings().validate(), Settings)


def test_sixteen_bit_grey_png_and_additional_tag_rules(tmp_path: Path) -> None:
    arr = (np.indices((32, 40)).sum(0) * 300).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "depth.png")
    _out, ds = convert_one(tmp_path / "depth.png", tmp_path / "o")
    assert (ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation) == (
        16,
        16,
        "MONOCHROME2",
    )
    assert np.array_equal(ds.pixel_array, arr)
    with pytest.raises(ConvertError, match="not an attribute we let presets set"):
        ConvertOptions(additional_tag="PatientID").validate()
    with pytest.raises(ConvertError, match="a keyword or"):
        ConvertOptions(additional_tag="NoSuchKeyword").validate()


def test_send_status_texts_and_association_chunks() -> None:
    from pacsbox.sendtopacs.send import SendItem, _chunks, _contexts_for, is_success, status_text

    assert status_text(0xA700) == "refused: out of resources"
    assert status_text(0xA901).startswith("error: data set does not match")
    assert status_text(0xC123) == "error: cannot understand"
    assert status_text(0x0122) == "failure: SOP class not supported"
    assert is_success(0xB000) and not is_success(0x0110) and not is_success(0xA700)
    items = [
        SendItem(str(i), sop_class=f"1.2.3.{i}", transfer_syntax=sc.JPEG_BASELINE)
        for i in range(100)
    ]
    chunks = _chunks(items, 0, decompress=False)  # 2 contexts per class: at most 64 classes
    assert [len(c) for c in chunks] == [64, 36]
    assert all(len(_contexts_for(c, False)) <= 128 for c in chunks)
    assert [len(c) for c in _chunks(items[:7], 3, False)] == [3, 3, 1]
    # a decompressing device proposes only uncompressed syntaxes
    cx = _contexts_for(items[:1], True)
    assert [list(c.transfer_syntax) for c in cx] == [["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]]


def test_truncated_jpeg_refused(inputs: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((inputs / "photo.jpg").read_bytes()[:3000])
    with pytest.raises(ConvertError, match="cut.jpg: not a readable image"):
        Converter(patient()).convert(cut)
