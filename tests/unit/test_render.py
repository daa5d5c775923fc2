"""pacsbox.archive.render against numpy references computed here (PS3.3 §C.11 modality/VOI
LUT, §C.7.6.3.1.2 photometric interpretations, PS3.18 §8.3.5 rendering parameters)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from pacsbox.archive import render
from pacsbox.archive.render import RenderError, RenderParams, Window
from tests.helpers import PYDICOM_TEST_FILES, make_ct

EXPLICIT_LE = "1.2.840.10008.1.2.1"


# -- references, written from the standard's equations, element by element ------------------
def ref_linear(x: float, c: float, w: float) -> float:
    """PS3.3 §C.11.2.1.2.1 (LINEAR), output range 0..255."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0


def ref_linear_exact(x: float, c: float, w: float) -> float:
    """PS3.3 §C.11.2.1.3.2 (LINEAR_EXACT)."""
    if x <= c - w / 2:
        return 0.0
    if x > c + w / 2:
        return 255.0
    return ((x - c) / w + 0.5) * 255.0


def ref_sigmoid(x: float, c: float, w: float) -> float:
    """PS3.3 §C.11.2.1.3.1 (SIGMOID)."""
    return 255.0 / (1.0 + math.exp(-4.0 * (x - c) / w))


def to8(values: np.ndarray) -> np.ndarray:
    return np.array([min(255, max(0, math.floor(v + 0.5))) for v in values.ravel()]).reshape(
        values.shape
    )


def reference(stored: np.ndarray, fn, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:  # noqa: ANN001
    modality = stored.astype(np.float64) * slope + intercept
    return to8(np.vectorize(fn)(modality)).astype(np.uint8)


# -- test images ------------------------------------------------------------------------------
def ramp(rows: int = 32, cols: int = 64, signed: bool = False) -> np.ndarray:
    values = np.linspace(-1200 if signed else 0, 3000, rows * cols).round()
    return values.astype(np.int16 if signed else np.uint16).reshape(rows, cols)


def gray_file(tmp_path: Path, arr: np.ndarray, name: str = "g.dcm", **attrs: object) -> Path:
    ds = make_ct(rows=arr.shape[-2], cols=arr.shape[-1])
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def png(path: Path, params: RenderParams | None = None, ts: str = EXPLICIT_LE) -> np.ndarray:
    params = params or RenderParams(media_type="image/png")
    out = render.render(path, ts, params)
    assert out.media_type == "image/png"
    return np.asarray(Image.open(io.BytesIO(out.data)))


def _ts(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


# -- grayscale pipeline -----------------------------------------------------------------------
def test_dataset_window_with_rescale_is_applied_exactly(tmp_path: Path) -> None:
    arr = ramp()
    path = gray_file(
        tmp_path, arr, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    got = png(path)
    want = reference(arr, lambda x: ref_linear(x, 40, 400), 1, -1024)
    assert got.dtype == np.uint8 and got.shape == arr.shape
    assert np.array_equal(got, want)
    assert got.min() == 0 and got.max() == 255  # the window clips both ends of the ramp


def test_first_of_multiple_window_values_is_used(tmp_path: Path) -> None:
    arr = ramp()
    path = gray_file(tmp_path, arr, WindowCenter=[1500, 300], WindowWidth=[1000, 50])
    assert np.array_equal(png(path), reference(arr, lambda x: ref_linear(x, 1500, 1000)))


@pytest.mark.parametrize(
    ("function", "fn"),
    [("LINEAR", ref_linear), ("LINEAR_EXACT", ref_linear_exact), ("SIGMOID", ref_sigmoid)],
)
def test_request_window_overrides_dataset_with_each_function(
    tmp_path: Path,
    function: str,
    fn,  # noqa: ANN001
) -> None:
    arr = ramp(signed=True)
    path = gray_file(
        tmp_path, arr, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0, WindowWidth=10
    )
    params = RenderParams(window=Window(700.5, 1234, function), media_type="image/png")
    want = reference(arr, lambda x: fn(x, 700.5, 1234), 2, -100)
    assert np.array_equal(png(path, params), want)


def test_dataset_voi_lut_function_is_honoured(tmp_path: Path) -> None:
    arr = ramp()
    path = gray_file(tmp_path, arr, WindowCenter=1000, WindowWidth=800, VOILUTFunction="SIGMOID")
    assert np.array_equal(png(path), reference(arr, lambda x: ref_sigmoid(x, 1000, 800)))


def test_rescale_slope_and_intercept_change_the_output(tmp_path: Path) -> None:
    arr = ramp()
    plain = png(gray_file(tmp_path, arr, "a.dcm", WindowCenter=500, WindowWidth=1000))
    scaled_path = gray_file(
        tmp_path,
        arr,
        "b.dcm",
        RescaleSlope=0.5,
        RescaleIntercept=200,
        WindowCenter=500,
        WindowWidth=1000,
    )
    scaled = png(scaled_path)
    assert np.array_equal(scaled, reference(arr, lambda x: ref_linear(x, 500, 1000), 0.5, 200))
    assert not np.array_equal(plain, scaled)


def test_no_window_maps_min_max_excluding_padding(tmp_path: Path) -> None:
    arr = ramp()
    arr[0, :4] = 0  # padding
    path = gray_file(tmp_path, arr, RescaleIntercept=-1000, PixelPaddingValue=0)
    body = arr[arr != 0].astype(np.float64) - 1000
    lo, hi = body.min(), body.max()
    want = to8((arr.astype(np.float64) - 1000 - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    assert np.array_equal(png(path), want)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    arr = ramp()
    attrs = dict(WindowCenter=1500, WindowWidth=2000)
    m2 = png(gray_file(tmp_path, arr, "m2.dcm", **attrs))
    m1 = png(gray_file(tmp_path, arr, "m1.dcm", PhotometricInterpretation="MONOCHROME1", **attrs))
    assert np.array_equal(m1, 255 - reference(arr, lambda x: ref_linear(x, 1500, 2000)))
    assert np.array_equal(m1, 255 - m2)
    assert m1[0, 0] == 255  # the lowest value is white


def test_voi_lut_sequence(tmp_path: Path) -> None:
    arr = (np.arange(32 * 64) % 300).astype(np.uint16).reshape(32, 64)
    item = Dataset()
    item.LUTDescriptor = [256, 10, 12]  # 256 entries, first input value 10, 12-bit output
    table = (np.arange(256) * 16).clip(0, 4095).astype(np.uint16)
    item.LUTData = table.astype("<u2").tobytes()
    path = gray_file(tmp_path, arr, VOILUTSequence=Sequence([item]))
    idx = np.clip(arr.astype(np.int64) - 10, 0, 255)
    want = to8(table[idx] * 255.0 / 4095).astype(np.uint8)
    assert np.array_equal(png(path), want)


def test_modality_lut_sequence_then_window(tmp_path: Path) -> None:
    arr = (np.arange(32 * 64) % 512).astype(np.uint16).reshape(32, 64)
    item = Dataset()
    item.LUTDescriptor = [512, 0, 16]
    table = ((np.arange(512) - 256) ** 2 // 64).astype(np.uint16)  # not monotonic
    item.LUTData = table.astype("<u2").tobytes()
    item.ModalityLUTType = "US"
    path = gray_file(
        tmp_path, arr, ModalityLUTSequence=Sequence([item]), WindowCenter=300, WindowWidth=600
    )
    want = to8(np.vectorize(lambda x: ref_linear(x, 300, 600))(table[arr].astype(np.float64)))
    assert np.array_equal(png(path), want.astype(np.uint8))


def test_functional_group_window_and_rescale_per_frame(tmp_path: Path) -> None:
    arr = np.stack([ramp(), ramp()])
    frames = []
    for center in (500, 2500):
        fg = Dataset()
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 1000
        fg.FrameVOILUTSequence = Sequence([voi])
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, 0, "US"
        fg.PixelValueTransformationSequence = Sequence([pvt])
        frames.append(fg)
    path = gray_file(
        tmp_path,
        arr,
        PerFrameFunctionalGroupsSequence=Sequence(frames),
        WindowCenter=0,
        WindowWidth=10,
    )
    for number, center in ((1, 500), (2, 2500)):
        got = png(path, RenderParams(frame=number, media_type="image/png"))
        assert np.array_equal(got, reference(arr[0], lambda x, c=center: ref_linear(x, c, 1000)))


# -- frames -------------------------------------------------------------------------------------
def _multiframe(tmp_path: Path, compress: bool) -> tuple[Path, np.ndarray]:
    frames = np.stack([np.full((16, 24), v, dtype=np.uint16) for v in (100, 900, 1700)])
    frames[:, 0, 0] = 0
    frames[:, -1, -1] = 2000
    path = gray_file(tmp_path, frames, "mf.dcm")
    if compress:
        ds = dcmread(path)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return path, frames


@pytest.mark.parametrize("compress", [False, True], ids=["native", "rle"])
def test_multiframe_selects_the_frame(tmp_path: Path, compress: bool) -> None:
    path, frames = _multiframe(tmp_path, compress)
    ts = _ts(path)
    for number in (1, 2, 3):
        got = png(path, RenderParams(frame=number, media_type="image/png"), ts)
        # min/max 0..2000 over each frame; the body value tells the frame
        assert got[5, 5] == math.floor(int(frames[number - 1, 5, 5]) * 255 / 2000 + 0.5)
    with pytest.raises(render.FrameNotFound):
        render.render(path, ts, RenderParams(frame=4))
    with pytest.raises(render.FrameNotFound):
        RenderParams(frame=0)


# -- colour ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
        "examples_ybr_color.dcm",  # multi-frame JPEG baseline, YBR_FULL_422
    ],
)
def test_ybr_is_converted_like_pydicom(name: str) -> None:
    path = PYDICOM_TEST_FILES / name
    ds = dcmread(path, stop_before_pixels=True)
    multi = int(ds.get("NumberOfFrames", 1) or 1) > 1
    raw = pixel_array(path, raw=True, index=0 if multi else None)  # still YCbCr
    want = convert_color_space(raw, "YBR_FULL", "RGB")
    got = png(path, ts=_ts(path))
    assert got.shape == want.shape and np.array_equal(got, want)


def test_ybr_jpeg_colours_match_the_lossless_rgb_original() -> None:
    """Not only pydicom's equations: the colours are those of the RGB source image."""
    original = png(PYDICOM_TEST_FILES / "SC_rgb_rle.dcm", ts=RLELossless).astype(int)
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"):
        path = PYDICOM_TEST_FILES / name
        got = png(path, ts=_ts(path)).astype(int)
        assert np.abs(got - original).mean() < 4, name  # lossy JPEG, same colours


def test_rgb_planar_configuration_and_big_endian() -> None:
    path = PYDICOM_TEST_FILES / "ExplVR_BigEnd.dcm"  # RGB, Planar Configuration 1
    ds = dcmread(path)
    assert ds.PlanarConfiguration == 1
    assert np.array_equal(png(path, ts=_ts(path)), ds.pixel_array)


def test_rgb_16_bit_is_scaled_to_8() -> None:
    path = PYDICOM_TEST_FILES / "SC_rgb_rle_16bit_2frame.dcm"
    ds = dcmread(path)
    got = png(path, RenderParams(frame=2, media_type="image/png"), _ts(path))
    assert np.array_equal(got, (ds.pixel_array[1] >> 8).astype(np.uint8))


def test_palette_color() -> None:
    path = PYDICOM_TEST_FILES / "examples_palette.dcm"
    ds = dcmread(path)
    lut = apply_color_lut(ds.pixel_array, ds)
    want = (lut >> 8).astype(np.uint8) if lut.dtype.itemsize > 1 else lut
    got = png(path, ts=_ts(path))
    assert got.shape == (*ds.pixel_array.shape, 3) and np.array_equal(got, want)


# -- geometry and output ---------------------------------------------------------------------------
def test_viewport_keeps_aspect_and_caps() -> None:
    assert render.fit_size(512, 256, (128, 128)) == (128, 64)
    assert render.fit_size(256, 512, (128, 128)) == (64, 128)
    assert render.fit_size(100, 50, (None, 200)) == (400, 200)  # rows only
    assert render.fit_size(100, 50, (1000, None)) == (1000, 500)  # columns only
    assert render.fit_size(100, 100, None) == (100, 100)
    assert render.fit_size(100, 100, (10**9, 10**9)) == (4096, 4096)


def test_render_viewport_region_and_formats(tmp_path: Path) -> None:
    arr = ramp(64, 128)
    path = gray_file(tmp_path, arr, WindowCenter=1500, WindowWidth=3000)
    full = png(path)
    out = render.render(path, EXPLICIT_LE, RenderParams(size=(32, 32)))
    img = Image.open(io.BytesIO(out.data))
    assert (img.format, img.size, img.mode) == ("JPEG", (32, 16), "L")
    # a pixel region (viewport sx,sy,sw,sh), flipped horizontally by a negative width
    region = render.Region(10, 5, -20, 8)
    got = png(path, RenderParams(region=region, media_type="image/png"))
    assert np.array_equal(got, full[5:13, 10:30][:, ::-1])
    # WADO-URI fractions
    got = png(path, RenderParams(fraction=(0.5, 0.0, 1.0, 0.5), media_type="image/png"))
    assert np.array_equal(got, full[0:32, 64:128])
    gif = render.render(path, EXPLICIT_LE, RenderParams(media_type="image/gif"))
    assert gif.data[:3] == b"GIF"
    small = render.render(path, EXPLICIT_LE, RenderParams(quality=5)).data
    big = render.render(path, EXPLICIT_LE, RenderParams(quality=100)).data
    assert len(small) < len(big)


def test_bare_dataset_and_deflated_files(tmp_path: Path) -> None:
    arr = ramp()
    path = gray_file(tmp_path, arr, WindowCenter=40, WindowWidth=400)
    from tests.helpers import dataset_bytes

    bare = tmp_path / "bare.dcm"
    bare.write_bytes(dataset_bytes(path))  # storage_format = native
    assert np.array_equal(png(bare), png(path))
    deflated = PYDICOM_TEST_FILES / "image_dfl.dcm"
    ds = dcmread(deflated)
    got = png(deflated, ts=_ts(deflated))
    assert got.shape == ds.pixel_array.shape


def test_not_renderable_objects(tmp_path: Path) -> None:
    ds = make_ct()
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(render.NotRenderable):
        render.render(path, EXPLICIT_LE, RenderParams())
    sr = PYDICOM_TEST_FILES / "test-SR.dcm"
    with pytest.raises(render.NotRenderable):
        render.render(sr, _ts(sr), RenderParams())


# -- parameter parsing (hostile input) ---------------------------------------------------
def test_parse_window() -> None:
    assert render.parse_window("40,400") == Window(40, 400, "LINEAR")
    assert render.parse_window("40,400,linear-exact") == Window(40, 400, "LINEAR_EXACT")
    assert render.parse_window(" -600.5 , 1500 , SIGMOID") == Window(-600.5, 1500, "SIGMOID")
    for bad in ("40", "a,b", "40,0", "40,-5", "40,400,cubic", "nan,400", "40,inf", "1,2,3,4"):
        with pytest.raises(RenderError):
            render.parse_window(bad)
    with pytest.raises(RenderError):
        Window(0, 0.5, "LINEAR")  # LINEAR needs width >= 1
    Window(0, 0.5, "LINEAR_EXACT")


def test_parse_viewport_quality_region_and_sizes() -> None:
    assert render.parse_viewport("128,64") == ((128, 64), None)
    assert render.parse_viewport("100,100,10,20,-30,40") == (
        (100, 100),
        render.Region(10, 20, -30, 40),
    )
    assert render.parse_viewport("99999999,5")[0] == (render.MAX_OUTPUT_SIDE, 5)  # capped
    for bad in ("0,10", "-1,10", "a,b", "10", "10,10,1,2,3", "10,10,-1,0,5,5", "10,10,0,0,0,5"):
        with pytest.raises(RenderError):
            render.parse_viewport(bad)
    assert render.parse_quality("75") == 75
    for bad in ("0", "101", "x", "-5", "9999999999"):
        with pytest.raises(RenderError):
            render.parse_quality(bad)
    assert render.parse_region("0,0.25,0.5,1") == (0.0, 0.25, 0.5, 1.0)
    for bad in ("0,0,1", "0.5,0,0.4,1", "0,0,1.5,1", "a,0,1,1", "-0.1,0,1,1"):
        with pytest.raises(RenderError):
            render.parse_region(bad)
    assert render.parse_positive_int("10000000", "rows") == render.MAX_OUTPUT_SIDE
    for bad in ("0", "-3", "1e3", "", "12" * 20):
        with pytest.raises(RenderError):
            render.parse_positive_int(bad, "rows")


@pytest.mark.parametrize("signed", [0, 1])
@pytest.mark.parametrize("bits", [(16, 12), (16, 16), (8, 8), (8, 7)])
def test_native_fast_path_equals_pydicom(tmp_path: Path, signed: int, bits: tuple) -> None:
    """The numpy read of native frames gives pydicom's values (unused high bits masked or
    sign-extended, PS3.5 §8.1.1), for every frame."""
    allocated, stored = bits
    rng = np.random.default_rng(allocated * 100 + stored + signed)
    raw = rng.integers(0, 1 << allocated, size=(3, 6, 10), dtype=np.uint64)
    ds = make_ct(rows=6, cols=10)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = signed
    ds.NumberOfFrames = 3
    ds.PixelData = raw.astype(f"<u{allocated // 8}").tobytes()
    path = tmp_path / "n.dcm"
    ds.save_as(path, enforce_file_format=True)
    want = dcmread(path).pixel_array
    for index in range(3):
        frame = render.read_frame(path, EXPLICIT_LE, index + 1)
        assert frame.pixels.dtype.kind == want.dtype.kind
        assert np.array_equal(frame.pixels, want[index]), index
