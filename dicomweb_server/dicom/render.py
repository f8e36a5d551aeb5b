"""Rendered images (PS3.18 §8.3.5, §9.5 Retrieve Rendered, §9.6 thumbnails): pure, bytes in, bytes out.

One frame goes through the PS3.4 §N.2.1 grayscale pipeline as a presentation
state would take it: Modality LUT (rescale, or the Modality LUT Sequence), VOI
(the request's ``window``, else the data set's first window, else its VOI LUT,
else the frame's own range), then the Presentation LUT (MONOCHROME1 and
INVERSE shapes are inverted).  Colour images are shown as RGB: YCbCr is
converted by the decoder and PALETTE COLOR goes through its lookup tables.
PS3.18 §8.3.5.1 then applies the source region and the viewport, in that order.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array

from dicomweb_server.errors import BadRequest, NotAcceptable

# PS3.18 §8.7.4 Table 8.7.4-1: the rendered image media types, and the Pillow format for each.
RENDERED_MEDIA_TYPES: Mapping[str, str] = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
# PS3.3 §C.11.2.1.3 VOI LUT Function, as PS3.18 §8.3.5.1.4 spells it in a URI.
VOI_FUNCTIONS: Mapping[str, str] = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
DEFAULT_QUALITY = 90  # JPEG quality when the request names none (as Orthanc does)
THUMBNAIL_SIZE = 128  # PS3.18 §9.6 leaves a thumbnail's size to the origin server
MAX_VIEWPORT = 8192  # pixels a rendered image may be wide or high (an 8192² RGB image is 192 MiB)

Pixels = np.ndarray[Any, Any]


class FrameOutOfRange(ValueError):
    """The frame number is not one of the instance's frames (they are numbered from 1)."""


class RenderError(Exception):
    """The instance has no pixel data that can be decoded and shown."""


@dataclass(frozen=True)
class Window:
    """PS3.18 §8.3.5.1.4 ``window=center,width,function``, in modality (rescaled) units."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 §8.3.5.1.3 ``viewport=vw,vh[,sx,sy,sw,sh]``.

    The source region starts at (sx, sy) and is sw x sh pixels (to the image's edge
    when absent); a negative sw or sh flips the region.  The region is scaled to
    fit vw x vh keeping its aspect ratio; a missing vw or vh follows from the other.
    """

    width: int | None
    height: int | None
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True)
class RenderParams:
    """What a Retrieve Rendered request asks for (PS3.18 Table 8.3.5-1)."""

    media_type: str = "image/jpeg"
    quality: int | None = None
    window: Window | None = None
    viewport: Viewport | None = None


def parse_params(params: Mapping[str, str], media_type: str) -> RenderParams:
    """The rendering query parameters; other keys (accept, charset, annotation, ...) are the caller's."""
    if media_type not in RENDERED_MEDIA_TYPES:
        raise NotAcceptable(f"Rendered images are {', '.join(RENDERED_MEDIA_TYPES)}, not {media_type}")
    return RenderParams(
        media_type=media_type,
        quality=_quality(params["quality"]) if "quality" in params else None,
        window=_window(params["window"]) if "window" in params else None,
        viewport=_viewport(params["viewport"]) if "viewport" in params else None,
    )


def thumbnail_params(params: Mapping[str, str], media_type: str) -> RenderParams:
    """A thumbnail is a rendered image that fits THUMBNAIL_SIZE square unless a viewport is given."""
    parsed = parse_params(params, media_type)
    if parsed.viewport is None:
        parsed = replace(parsed, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return parsed


# Numbers in parameters are ASCII, without spaces: str.isdigit(), int() and float() also take
# other scripts' digits, underscores and surrounding (Unicode) white space, which a URI
# parameter never means.
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
_DECIMAL = re.compile(r"[+-]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _quality(text: str) -> int:
    """PS3.18 §8.3.5.1.2: an integer from 1 (smallest) to 100 (best)."""
    if not _INTEGER.fullmatch(text) or not 1 <= int(text) <= 100:
        raise BadRequest(f"quality must be an integer from 1 to 100, got {_shown(text)}")
    return int(text)


def _window(text: str) -> Window:
    """PS3.18 §8.3.5.1.4: center, width and a VOI LUT Function (linear when left out)."""
    parts = text.split(",")  # no spaces: str.strip() would also take Unicode ones
    if len(parts) not in (2, 3):
        raise BadRequest(f"window must be center,width,function, got {_shown(text)}")
    center, width = (_number(p, "window center and width") for p in parts[:2])
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in VOI_FUNCTIONS.values():
        raise BadRequest(
            f"window function must be one of {', '.join(VOI_FUNCTIONS.values())}, got {function!r}"
        )
    # PS3.3 §C.11.2.1.2.1 and §C.11.2.1.3: width >= 1 for LINEAR, > 0 otherwise.
    if width < 1 if function == "linear" else width <= 0:
        raise BadRequest(f"window width {width:g} is too small for the {function} function")
    return Window(center, width, function)


def _number(text: str, what: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise BadRequest(f"{what} must be numbers, got {_shown(text)}")
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"{what} must be finite numbers, got {_shown(text)}")
    return value


def _viewport(text: str) -> Viewport:
    """PS3.18 §8.3.5.1.3: two values, or six of which the last four may be empty."""
    parts = text.split(",")  # no spaces: str.strip() would also take Unicode ones
    if len(parts) not in (2, 6):
        raise BadRequest(f"viewport must be vw,vh or vw,vh,sx,sy,sw,sh, got {_shown(text)}")
    vw, vh, sx, sy, sw, sh = (_integer(p, text) for p in parts + [""] * (6 - len(parts)))
    if vw is None and vh is None:
        raise BadRequest(f"viewport needs a width or a height, got {_shown(text)}")
    if (vw is not None and vw < 1) or (vh is not None and vh < 1):
        raise BadRequest(f"viewport width and height must be positive, got {_shown(text)}")
    if max(vw or 0, vh or 0) > MAX_VIEWPORT:
        raise BadRequest(f"viewport width and height are at most {MAX_VIEWPORT} pixels, got {_shown(text)}")
    if (sx is not None and sx < 0) or (sy is not None and sy < 0) or sw == 0 or sh == 0:
        raise BadRequest(
            f"viewport source region must start at sx,sy >= 0 and not be empty, got {_shown(text)}"
        )
    return Viewport(vw, vh, sx or 0, sy or 0, sw, sh)


def _integer(text: str, whole: str) -> int | None:
    if not text:
        return None
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"viewport values must be integers (at most 9 digits), got {_shown(whole)}")
    return int(text)


def render(data: bytes, frame: int, params: RenderParams) -> bytes:
    """Frame ``frame`` (from 1) of a PS3.10 file as an image of ``params.media_type``.

    Only that frame is decoded.  A source region outside the image is a BadRequest.
    """
    ds = _read(data)
    count = _frame_count(ds)
    if not 1 <= frame <= count:
        raise FrameOutOfRange(f"frame {frame} is not in 1..{count}")
    pixels = _display(ds, frame - 1, params.window)
    try:
        image = Image.fromarray(pixels)
    except (TypeError, ValueError) as exc:  # a shape or sample type no image mode holds
        raise RenderError(f"the decoded frame cannot be shown: {pixels.shape} {pixels.dtype}") from exc
    image = _fit(image, params.viewport)
    if params.media_type != "image/png" and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # JPEG and GIF hold neither alpha nor 16-bit samples
    return _encode(image, params)


def _read(data: bytes) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about invalid values it still reads
            ds = dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types on malformed input
        raise RenderError("the DICOM file cannot be read") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    return ds


def _frame_count(ds: Dataset) -> int:
    """PS3.3 §C.7.6.6: Number of Frames, 1 when absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise RenderError("Number of Frames is not a number") from None


def _display(ds: Dataset, index: int, window: Window | None) -> Pixels:
    """One frame as 8-bit display values: (rows, columns) grayscale or (rows, columns, 3) RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index)  # YCbCr comes back as RGB
            if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
                rgb = apply_color_lut(arr, ds)[..., :3]
                return _to_8_bits(rgb, 16 if rgb.dtype.itemsize > 1 else 8)
            if arr.ndim == 3:
                return _to_8_bits(arr, int(ds.get("BitsStored", 8)))
            return _grayscale(arr, ds, index, window)
    except Exception as exc:  # pydicom and the codecs raise many types on bad pixel data
        raise RenderError("the pixel data cannot be decoded") from exc


def _to_8_bits(arr: Pixels, bits: int) -> Pixels:
    """Colour samples of ``bits`` bits scaled to 0..255."""
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    top = float(2 ** min(bits, 8 * arr.dtype.itemsize) - 1)
    return np.rint(np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8)


def _grayscale(arr: Pixels, ds: Dataset, index: int, window: Window | None) -> Pixels:
    """PS3.4 §N.2.1.1: Modality LUT, VOI LUT, Presentation LUT, to 8 bits."""
    values = _modality(arr, ds, index)
    shown = np.rint(_voi(values, ds, index, window) * 255.0).astype(np.uint8)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE":
        return np.asarray(255 - shown, dtype=np.uint8)
    return shown


def _modality(arr: Pixels, ds: Dataset, index: int) -> Pixels:
    """PS3.3 §C.11.1: stored values to modality units (per-frame rescale of enhanced objects too)."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = _frame_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _frame_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    values = arr.astype(np.float64)
    if slope is not None:
        values *= float(slope)
    if intercept is not None:
        values += float(intercept)
    return values


def _voi(values: Pixels, ds: Dataset, index: int, window: Window | None) -> Pixels:
    """PS3.3 §C.11.2: modality values to 0..1, by window, VOI LUT, or the frame's own range."""
    window = window or _dataset_window(ds, index)
    if window is not None:
        return _apply_window(values, window)
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lut = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        return np.asarray(lut, dtype=np.float64) / float(2**bits - 1)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not high > low:
        return np.zeros_like(values)
    return np.nan_to_num((values - low) / (high - low))


def _dataset_window(ds: Dataset, index: int) -> Window | None:
    """The first Window Center/Width of the frame (functional groups) or of the data set."""
    center = _first(_frame_value(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_frame_value(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    function = str(_frame_value(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
    if center is None or width is None or not math.isfinite(center) or not math.isfinite(width):
        return None
    name = VOI_FUNCTIONS.get(function, "linear")
    if width < 1 if name == "linear" else width <= 0:
        return None  # an invalid stored window: fall back to the frame's range
    return Window(center, width, name)


def _first(value: Any) -> float | None:
    """A DS value that may be multi-valued (one window per alternative view)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    return float(value)


def _frame_value(ds: Dataset, index: int, macro: str, keyword: str) -> Any:
    """PS3.3 §C.7.6.16: an attribute from the frame's functional group, the shared one, or the top level."""
    for groups, item in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        sequence = ds.get(groups)
        if sequence and item < len(sequence) and sequence[item].get(macro):
            found = sequence[item].get(macro)[0].get(keyword)
            if found is not None:
                return found
    return ds.get(keyword)


def _apply_window(x: Pixels, window: Window) -> Pixels:
    """PS3.3 §C.11.2.1.2.1 (linear), §C.11.2.1.3.2 (linear exact), §C.11.2.1.3.1 (sigmoid), to 0..1."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700, 700))))
    if window.function == "linear-exact":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if w <= 1:
        return (x > c - 0.5).astype(np.float64)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _fit(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """PS3.18 §8.3.5.1.3: crop the source region (flipping it for negative sizes), then fit the viewport."""
    if viewport is None:
        return image
    sx, sy = viewport.sx, viewport.sy
    if sx >= image.width or sy >= image.height:
        raise BadRequest(f"viewport source region starts outside the {image.width}x{image.height} image")
    sw = min(abs(viewport.sw or image.width), image.width - sx)
    sh = min(abs(viewport.sh or image.height), image.height - sy)
    region = image.crop((sx, sy, sx + sw, sy + sh))
    if viewport.sw is not None and viewport.sw < 0:
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if viewport.sh is not None and viewport.sh < 0:
        region = region.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(
        viewport.width / sw if viewport.width else math.inf,
        viewport.height / sh if viewport.height else math.inf,
    )
    size = (max(1, round(sw * scale)), max(1, round(sh * scale)))
    return region if size == region.size else region.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, params: RenderParams) -> bytes:
    """The image in the requested format; quality applies to JPEG only (PS3.18 §8.3.5.1.2)."""
    out = io.BytesIO()
    fmt = RENDERED_MEDIA_TYPES[params.media_type]
    if fmt == "JPEG":
        image.save(out, fmt, quality=params.quality or DEFAULT_QUALITY)
    else:
        image.save(out, fmt)
    return out.getvalue()
