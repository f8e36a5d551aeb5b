"""render.py: query parameters, the grayscale pipeline on synthetic data with known values,
viewport geometry, and every image in pydicom's corpus rendered and read back with Pillow."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from dicomweb_server.dicom.render import (
    THUMBNAIL_SIZE,
    FrameOutOfRange,
    RenderError,
    RenderParams,
    Viewport,
    Window,
    parse_params,
    render,
    thumbnail_params,
)
from dicomweb_server.errors import BadRequest, NotAcceptable
from tests.support.testdata import corpus, part10

PNG = RenderParams(media_type="image/png")


def image(pixels: np.ndarray[Any, Any], **attrs: Any) -> bytes:
    """A Part 10 file with these grayscale pixels ((frames,) rows, columns; 8 or 16 bits, signed or not)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return part10(ds)


def shown(data: bytes, params: RenderParams = PNG, frame: int = 1) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(render(data, frame, params))))


def ramp(low: int, high: int, dtype: str = "<u2") -> np.ndarray[Any, Any]:
    """One row per value from low to high (inclusive), 2 columns wide."""
    return np.repeat(np.arange(low, high + 1, dtype=dtype)[:, None], 2, axis=1)


# the grayscale pipeline (PS3.4 N.2.1) -------------------------------------------------------------


def test_linear_exact_window_maps_the_window_onto_0_255() -> None:
    data = image(ramp(0, 1000))
    out = shown(data, RenderParams("image/png", window=Window(500, 200, "linear-exact")))[:, 0]
    assert out[:400].max() == 0 and out[600:].min() == 255
    assert out[500] == 128  # (500 - 500) / 200 + 0.5 = 0.5
    assert out[450] == round(0.25 * 255)
    assert np.all(np.diff(out.astype(int)) >= 0)


def test_linear_window_follows_ps3_3_c_11_2_1_2_1() -> None:
    data = image(ramp(0, 1000))
    out = shown(data, RenderParams("image/png", window=Window(500, 201, "linear")))[:, 0]
    # x <= c - 0.5 - (w - 1) / 2 -> 0, x > c - 0.5 + (w - 1) / 2 -> 255
    assert out[399] == 0 and out[400] == round((0.5 / 200) * 255) == 1 and out[599] == 254 and out[600] == 255
    assert out[500] == round(((500 - 499.5) / 200 + 0.5) * 255)


def test_sigmoid_window_is_half_at_the_center() -> None:
    out = shown(image(ramp(0, 1000)), RenderParams("image/png", window=Window(300, 100, "sigmoid")))[:, 0]
    assert out[300] == 128 and out[0] == 0 and out[1000] == 255


def test_window_applies_to_rescaled_signed_values() -> None:
    """Modality LUT first (PS3.3 C.11.1): stored -1024..1024 with intercept -1000 are -2024..24 HU."""
    data = image(ramp(-1024, 1024, "<i2"), RescaleSlope=1, RescaleIntercept=-1000)
    out = shown(data, RenderParams("image/png", window=Window(0, 20, "linear-exact")))[:, 0]
    hu0 = 1024 + 1000  # the row whose stored value is 1000
    assert out[hu0] == 128 and out[hu0 - 10] == 0 and out[hu0 + 10] == 255


def test_the_data_sets_window_is_used_when_none_is_asked() -> None:
    data = image(ramp(0, 1000), WindowCenter=[200, 900], WindowWidth=[100, 50], VOILUTFunction="LINEAR_EXACT")
    out = shown(data)[:, 0]
    assert out[200] == 128 and out[150] == 0 and out[250] == 255


def test_an_asked_window_overrides_the_data_sets() -> None:
    data = image(ramp(0, 1000), WindowCenter=200, WindowWidth=100)
    out = shown(data, RenderParams("image/png", window=Window(800, 100, "linear-exact")))[:, 0]
    assert out[250] == 0 and out[800] == 128


def test_without_a_window_the_frames_range_is_shown() -> None:
    out = shown(image(ramp(100, 355)))[:, 0]
    assert out[0] == 0 and out[-1] == 255 and np.array_equal(out, np.arange(256))


def test_monochrome1_is_inverted() -> None:
    pixels = ramp(0, 1000)
    window = RenderParams("image/png", window=Window(500, 200, "linear-exact"))
    normal = shown(image(pixels), window)
    inverted = shown(image(pixels, PhotometricInterpretation="MONOCHROME1"), window)
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))


def test_inverse_presentation_lut_shape_is_inverted() -> None:
    pixels = ramp(0, 255, "u1")
    assert np.array_equal(shown(image(pixels, PresentationLUTShape="INVERSE"))[:, 0], 255 - np.arange(256))


def test_per_frame_functional_groups_give_each_frame_its_window() -> None:
    """PS3.3 C.7.6.16: enhanced objects keep windows (and rescale) per frame."""
    frames = np.stack([ramp(0, 1000), ramp(0, 1000)])

    def group(center: int) -> Dataset:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = center, 100, "LINEAR_EXACT"
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        return item

    data = image(frames, PerFrameFunctionalGroupsSequence=Sequence([group(200), group(700)]))
    assert shown(data, frame=1)[200, 0] == 128 and shown(data, frame=1)[700, 0] == 255
    assert shown(data, frame=2)[700, 0] == 128 and shown(data, frame=2)[200, 0] == 0


def test_only_the_asked_frame_is_shown() -> None:
    frames = np.stack([np.full((4, 4), v, np.uint8) for v in (0, 100, 200)])
    params = RenderParams("image/png", window=Window(128, 256, "linear-exact"))
    for number, value in ((1, 0), (2, 100), (3, 200)):
        assert shown(image(frames), params, frame=number)[0, 0] == round(value / 256 * 255)


@pytest.mark.parametrize("frame", [0, 2, -1])
def test_a_frame_outside_the_instance(frame: int) -> None:
    with pytest.raises(FrameOutOfRange):
        render(image(ramp(0, 9)), frame, PNG)


# colour ---------------------------------------------------------------------------------------


def test_palette_colour_goes_through_its_lookup_tables() -> None:
    path = next(p for p in corpus() if p.name == "examples_palette.dcm")
    out = shown(path.read_bytes())
    assert out.ndim == 3 and out.shape[2] == 3
    assert np.any(out[..., 0] != out[..., 1])


def test_16_bit_rgb_is_scaled_to_8_bits() -> None:
    path = next(p for p in corpus() if p.name == "SC_rgb_rle_16bit.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = dcmread(path).pixel_array
    out = shown(path.read_bytes())
    assert np.array_equal(out, np.rint(source * (255 / 65535)).astype(np.uint8))


# viewport (PS3.18 8.3.5.1.3) ----------------------------------------------------------------------


def size(data: bytes, viewport: str, media: str = "image/png") -> tuple[int, int]:
    return Image.open(io.BytesIO(render(data, 1, parse_params({"viewport": viewport}, media)))).size


WIDE = image(np.zeros((32, 64), np.uint8))  # 64 columns, 32 rows


@pytest.mark.parametrize(
    ("viewport", "expected"),
    [
        ("128,128", (128, 64)),  # scaled up to fit, aspect ratio kept
        ("16,16", (16, 8)),
        ("100,10", (20, 10)),
        ("64,", (64, 32)),  # the height follows from the width
        (",8", (16, 8)),
        ("10,10,0,0,32,16", (10, 5)),  # a source region, then the viewport
        ("64,64,32,16,,", (64, 32)),  # the region runs to the image's edge: 32 x 16
        ("64,64,0,0,-32,16", (64, 32)),  # flipped
        ("64,64,60,0,1000,1000", (8, 64)),  # a region past the edge stops there: 4 x 32
    ],
)
def test_viewport_sizes(viewport: str, expected: tuple[int, int]) -> None:
    assert size(WIDE, viewport) == expected


def test_negative_source_sizes_flip_the_region() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    data = image(pixels)
    params = RenderParams("image/png", window=Window(128, 256, "linear-exact"))
    plain = shown(data, params)
    flipped_x = shown(
        data, RenderParams("image/png", params.quality, params.window, Viewport(4, 3, 0, 0, -4, 3))
    )
    flipped_y = shown(
        data, RenderParams("image/png", params.quality, params.window, Viewport(4, 3, 0, 0, 4, -3))
    )
    assert np.array_equal(flipped_x, plain[:, ::-1])
    assert np.array_equal(flipped_y, plain[::-1, :])


def test_a_source_region_outside_the_image_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="outside"):
        size(WIDE, "10,10,64,0,10,10")


# media types and quality ----------------------------------------------------------------------------


NOISE = image(np.random.default_rng(1).integers(0, 4096, (96, 96), dtype=np.uint16))


@pytest.mark.parametrize(
    ("media", "fmt"), [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")]
)
def test_media_types(media: str, fmt: str) -> None:
    img = Image.open(io.BytesIO(render(NOISE, 1, parse_params({}, media))))
    assert img.format == fmt and img.size == (96, 96)


def test_jpeg_quality_is_honoured() -> None:
    small = render(NOISE, 1, parse_params({"quality": "5"}, "image/jpeg"))
    large = render(NOISE, 1, parse_params({"quality": "95"}, "image/jpeg"))
    assert len(small) < len(large) / 2


def test_thumbnails_fit_the_default_size_unless_a_viewport_is_given() -> None:
    assert thumbnail_params({}, "image/jpeg").viewport == Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    img = Image.open(io.BytesIO(render(WIDE, 1, thumbnail_params({}, "image/jpeg"))))
    assert img.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE // 2)
    assert thumbnail_params({"viewport": "32,32"}, "image/png").viewport == Viewport(32, 32)


# parse_params ----------------------------------------------------------------------------------------


def test_parse_params_reads_every_parameter() -> None:
    params = parse_params(
        {"quality": "70", "window": "40,400,SIGMOID", "viewport": "512,256,1,2,-3,4"}, "image/png"
    )
    assert params == RenderParams(
        "image/png", 70, Window(40, 400, "sigmoid"), Viewport(512, 256, 1, 2, -3, 4)
    )
    assert parse_params({"window": "-600.5,1500.25"}, "image/jpeg").window == Window(
        -600.5, 1500.25, "linear"
    )
    assert parse_params({"accept": "image/png", "annotation": "patient"}, "image/jpeg") == RenderParams()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("quality", "0"),
        ("quality", "101"),
        ("quality", "high"),
        ("quality", ""),
        ("window", "40"),
        ("window", "40,400,linear,extra"),
        ("window", "a,b,linear"),
        ("window", "40,400,cubic"),
        ("window", "40,0.5,linear"),  # linear needs a width >= 1
        ("window", "40,0,sigmoid"),
        ("window", "nan,400,linear"),
        ("viewport", "512"),
        ("viewport", "512,512,0"),
        ("viewport", "0,512"),
        ("viewport", ","),
        ("viewport", "a,b"),
        ("viewport", "512,512,-1,0,10,10"),
        ("viewport", "512,512,0,0,0,10"),
        ("viewport", "1.5,2"),
        # Digits are ASCII: str.isdigit(), int() and float() take superscripts, other scripts, "_".
        ("quality", "\u00b3"),
        ("quality", "\u0663"),
        ("quality", "9" * 5000),
        ("quality", "1_0"),
        ("window", "\u0664\u0660,400"),
        ("window", "40,4_00"),
        ("window", "9" * 5000 + ",400"),
        ("viewport", "\u0663\u0662,32"),
        ("viewport", "32,32,\u00b9,0,4,4"),
        ("viewport", "1_0,10"),
        ("viewport", "9" * 5000 + ",10"),
        ("viewport", "100000,10"),  # larger than MAX_VIEWPORT: the image would not fit in memory
        # No spaces ("quality=+50" reaches us as " 50"; str.strip() also takes U+2009).
        ("quality", " 50"),
        ("quality", "50\u2009"),
        ("window", "40, 400"),
        ("viewport", "32,\t32"),
    ],
)
def test_bad_parameters_are_bad_requests(key: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_params({key: value}, "image/jpeg")
    assert key in caught.value.message


def test_an_unsupported_media_type_is_not_acceptable() -> None:
    with pytest.raises(NotAcceptable):
        parse_params({}, "image/tiff")


# failures and the corpus ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not DICOM", part10(Dataset())], ids=["empty", "text", "no-pixels"])
def test_what_cannot_be_rendered_is_a_render_error(data: bytes) -> None:
    with pytest.raises(RenderError):
        render(data, 1, PNG)


def _corpus_images() -> list[Path]:
    found = []
    for path in corpus():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path)
                ds.pixel_array  # noqa: B018 - pydicom decodes it: so must render
        except Exception:
            continue
        found.append(path)
    return found


@pytest.mark.parametrize("path", _corpus_images(), ids=lambda p: p.name)
def test_every_corpus_image_renders(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, stop_before_pixels=True)
    img = Image.open(io.BytesIO(render(path.read_bytes(), 1, RenderParams())))
    assert img.format == "JPEG"
    assert img.size == (ds.Columns, ds.Rows)
    assert img.mode == (
        "L" if ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation != "PALETTE COLOR" else "RGB"
    )


@pytest.mark.parametrize("media", ["image/jpeg", "image/gif", "image/png"])
@pytest.mark.parametrize("samples", [2, 4])
def test_odd_sample_counts_render_or_fail_as_render_errors(media: str, samples: int) -> None:
    """A 2- or 4-sample image (no JPEG mode holds it): converted to RGB, or a RenderError, never a crash."""
    pixels = np.arange(4 * 4 * samples, dtype=np.uint8).reshape(4, 4, samples)
    data = image(
        pixels[..., 0],
        SamplesPerPixel=samples,
        PhotometricInterpretation="ARGB" if samples == 4 else "MONOCHROME2",
        PlanarConfiguration=0,
        PixelData=pixels.tobytes(),
    )
    try:
        out = render(data, 1, RenderParams(media_type=media))
    except RenderError:
        return
    assert Image.open(io.BytesIO(out)).size == (4, 4)
