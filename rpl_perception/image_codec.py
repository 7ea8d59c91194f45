"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` ↔ numpy, without cv_bridge.

ROS-free: messages are duck-typed (``height``, ``width``, ``encoding``, ``step``, ``is_bigendian``,
``data``; ``format`` and ``data`` for compressed images), so this module is tested without rclpy.
Encoding names and their layouts follow ``sensor_msgs/image_encodings.hpp``; conversions to RGB
follow ROS 2 cv_bridge (``cvtColor`` codes, 16 → 8 bit scaled by 255/65535 with rounding).

Every problem with a message raises :class:`ImageDecodeError` (a ``ValueError``) saying what was
received and what is accepted. Sizes are checked against a pixel limit before any pixel is converted
or decoded: a compressed image's size is read from its header (Pillow reads headers without decoding),
so a small PNG that declares 30000×30000 pixels costs microseconds, not seconds and gigabytes.
"""

import io
import sys
import threading
import warnings
from array import array
from typing import NamedTuple, Tuple

import cv2
import numpy as np
from PIL import Image as PILImage

from .image import MAX_IMAGE_SIDE

__all__ = ["ImageDecodeError", "CAMERA_ENCODINGS", "DEFAULT_MAX_PIXELS", "image_to_array", "image_to_rgb",
           "compressed_image_size", "compressed_to_rgb", "fill_image"]

#: default pixel limit per frame: 4096×4096 (16.8 MP) covers 4K UHD and 12 MP cameras
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """A message that cannot be read as an image (bad encoding, size, step, data)."""


class Layout(NamedTuple):
    dtype: str  # numpy scalar type, native byte order
    channels: int


LAYOUTS = {
    "rgb8": Layout("u1", 3), "bgr8": Layout("u1", 3),
    "rgba8": Layout("u1", 4), "bgra8": Layout("u1", 4),
    "mono8": Layout("u1", 1), "mono16": Layout("u2", 1),
    # 4:2:2 packed, two bytes per pixel: ROS "yuv422" is UYVY, "yuv422_yuy2" is YUYV
    "yuv422": Layout("u1", 2), "uyvy": Layout("u1", 2),
    "yuv422_yuy2": Layout("u1", 2), "yuyv": Layout("u1", 2),
    **{f"bayer_{p}8": Layout("u1", 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": Layout("u2", 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    # outputs of the node (not camera frames)
    "32FC1": Layout("f4", 1), "8UC1": Layout("u1", 1),
}

#: cvtColor code to RGB for each camera encoding (None: already RGB). OpenCV names a Bayer
#: pattern by the second row's second and third pixels, hence RGGB → BayerBG (as cv_bridge).
TO_RGB = {
    "rgb8": None, "bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB, "mono16": cv2.COLOR_GRAY2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV, "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
    "bayer_rggb16": cv2.COLOR_BayerBG2RGB, "bayer_bggr16": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg16": cv2.COLOR_BayerGR2RGB, "bayer_grbg16": cv2.COLOR_BayerGB2RGB,
}

#: the encodings the node accepts as camera input
CAMERA_ENCODINGS = tuple(TO_RGB)


def check_size(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Refuse an empty frame, one with a side over MAX_IMAGE_SIDE or more than ``max_pixels`` pixels."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image: width {width}, height {height}")
    if width * height > max_pixels:  # first: the limit the user set is the one to quote
        raise ImageDecodeError(f"{what} of {width}×{height} = {width * height} pixels exceeds "
                               f"max_image_pixels {max_pixels}")
    if max(height, width) > MAX_IMAGE_SIDE:
        raise ImageDecodeError(f"{what} of {width}×{height} pixels exceeds the largest accepted side "
                               f"{MAX_IMAGE_SIDE}; is the message header corrupt?")


def image_to_array(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pixels of an Image message as a numpy view in its own encoding (no conversion).

    Shape (H, W) for one channel, (H, W, C) otherwise; row padding (``step``) is skipped by the
    view's strides and multi-byte data keeps the message's byte order, so no byte is copied.
    """
    encoding = msg.encoding
    layout = LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(f"encoding {encoding!r} is not supported; accepted: {', '.join(LAYOUTS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(width, height, max_pixels)
    dtype = np.dtype(layout.dtype).newbyteorder(">" if msg.is_bigendian else "<")
    pixel_bytes = dtype.itemsize * layout.channels
    if step < width * pixel_bytes:
        raise ImageDecodeError(f"step {step} is smaller than width × bytes per pixel = "
                               f"{width} × {pixel_bytes} = {width * pixel_bytes} for {encoding}")
    buffer = np.frombuffer(msg.data, np.uint8)
    if buffer.size < step * height:
        raise ImageDecodeError(f"data has {buffer.size} bytes, fewer than step × height = "
                               f"{step} × {height} = {step * height}")
    shape = (height, width, layout.channels) if layout.channels > 1 else (height, width)
    strides = (step, pixel_bytes, dtype.itemsize)[: len(shape)]
    return np.ndarray(shape, dtype, buffer=buffer, strides=strides)


def image_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An Image message as an H×W×3 uint8 RGB array (a view of the message for unpadded rgb8)."""
    if msg.encoding not in TO_RGB:
        problem = "is not a camera image" if msg.encoding in LAYOUTS else "is not supported"
        raise ImageDecodeError(f"encoding {msg.encoding!r} {problem}; "
                               f"accepted: {', '.join(CAMERA_ENCODINGS)}")
    pixels = image_to_array(msg, max_pixels)
    if msg.encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and pixels.shape[1] % 2:
        raise ImageDecodeError(f"{msg.encoding} packs pixel pairs: width must be even, got {pixels.shape[1]}")
    code = TO_RGB[msg.encoding]
    if code is None:
        return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
    if pixels.dtype.itemsize == 2:
        pixels = pixels.astype(np.uint16)  # native byte order for OpenCV
        if msg.encoding == "mono16":
            return cv2.cvtColor(scale_16_to_8(pixels), code)
        return scale_16_to_8(cv2.cvtColor(pixels, code))  # demosaic at full depth, then scale
    return cv2.cvtColor(pixels, code)


def scale_16_to_8(pixels: np.ndarray) -> np.ndarray:
    """round(v × 255 / 65535), exactly as cv_bridge's ``convertTo`` from 16 to 8 bits."""
    # 65535 is odd, so v × 255 / 65535 never ends in .5: integer rounding equals cvRound
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


#: warnings.catch_warnings changes process-wide state: one header read at a time (microseconds each)
_HEADER_LOCK = threading.Lock()


def compressed_image_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from the header of a compressed image, without decoding its pixels."""
    try:
        with _HEADER_LOCK, warnings.catch_warnings():
            # Pillow warns above 89 MP and refuses above 179 MP with its own limit; only the header is
            # read here and the caller's max_image_pixels decides, so its check is off meanwhile
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            pillow_limit, PILImage.MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS, None
            try:
                with PILImage.open(io.BytesIO(data)) as image:  # reads the header only
                    return image.size
            finally:
                PILImage.MAX_IMAGE_PIXELS = pillow_limit
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on malformed headers
        raise ImageDecodeError(f"cannot read the image size from the header of {len(data)} bytes of "
                               f"compressed data ({type(exc).__name__}: {exc}); "
                               "accepted: JPEG, PNG, WebP, BMP, TIFF") from None


def compressed_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A CompressedImage (JPEG, PNG or another format both Pillow and OpenCV read) as an H×W×3 uint8
    RGB array. The size in the header is checked against ``max_pixels`` before decoding."""
    fmt = getattr(msg, "format", "")
    if "compresseddepth" in fmt.lower():
        raise ImageDecodeError(f"format {fmt!r} is a depth map, not a camera image; accepted: jpeg, png")
    data = np.frombuffer(msg.data, np.uint8)
    if data.size == 0:
        raise ImageDecodeError(f"compressed image has no data (format {fmt!r})")
    width, height = compressed_image_size(data)
    check_size(width, height, max_pixels, f"compressed image (format {fmt!r})")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"cannot decode {data.size} bytes of compressed data "
                               f"(format {fmt!r}): {exc.err}") from None
    if bgr is None:
        raise ImageDecodeError(f"cannot decode {data.size} bytes of compressed data (format {fmt!r}); "
                               "accepted: JPEG, PNG or another format OpenCV reads")
    if bgr.shape[:2] != (height, width):  # a header that lies about the size
        raise ImageDecodeError(f"decoded image of {bgr.shape[1]}×{bgr.shape[0]} pixels differs from "
                               f"the {width}×{height} its header declares")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fill_image(msg, pixels: np.ndarray, encoding: str):
    """Set an Image message's fields from an array (rgb8, mono8, 32FC1, …); returns ``msg``.

    The data is copied once into the ``array('B')`` that rosidl messages store, with no row
    padding and in this machine's byte order.
    """
    layout = LAYOUTS.get(encoding)
    if layout is None:
        raise ValueError(f"encoding {encoding!r} is not supported; accepted: {', '.join(LAYOUTS)}")
    expected = (2,) if layout.channels == 1 else (3,)
    if (pixels.ndim not in expected or pixels.dtype != np.dtype(layout.dtype)
            or (layout.channels > 1 and pixels.shape[2] != layout.channels)):
        shape = "H×W" if layout.channels == 1 else f"H×W×{layout.channels}"
        raise ValueError(f"{encoding} needs an {shape} array of dtype {np.dtype(layout.dtype)}; "
                         f"got shape {pixels.shape}, dtype {pixels.dtype}")
    pixels = np.ascontiguousarray(pixels)
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = int(pixels.dtype.itemsize > 1 and sys.byteorder == "big")
    msg.step = pixels.shape[1] * layout.channels * pixels.dtype.itemsize
    data = array("B")
    data.frombytes(pixels.reshape(-1).view(np.uint8))
    msg.data = data
    return msg
