"""rpl_perception.image_codec: Image / CompressedImage ↔ numpy, on duck-typed messages (no rclpy)."""

import struct
import sys
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from rpl_perception import image_codec as codec
from rpl_perception.image import MAX_IMAGE_SIDE
from rpl_perception.image_codec import (
    CAMERA_ENCODINGS,
    ImageDecodeError,
    compressed_image_size,
    compressed_to_rgb,
    fill_image,
    image_to_array,
    image_to_rgb,
    scale_16_to_8,
)

RNG = np.random.default_rng(0)


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    """A duck-typed sensor_msgs/Image with ``pad`` garbage bytes at the end of each row."""
    h, w = pixels.shape[:2]
    order = ">" if bigendian else "<"
    raw = pixels.astype(pixels.dtype.newbyteorder(order)).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([raw, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                           step=rows.shape[1], data=rows.tobytes())


def rgb_frame(h=6, w=10):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- raw layouts -----------------------------------------------------------------------------------

def test_unpadded_rgb8_is_a_view_of_the_message_data():
    rgb = rgb_frame()
    msg = SimpleNamespace(height=6, width=10, encoding="rgb8", is_bigendian=0, step=30,
                          data=bytearray(rgb.tobytes()))
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("pad", [0, 2, 7])
@pytest.mark.parametrize("encoding,convert", [
    ("rgb8", None), ("bgr8", cv2.COLOR_RGB2BGR), ("rgba8", cv2.COLOR_RGB2RGBA),
    ("bgra8", cv2.COLOR_RGB2BGRA)])
def test_colour_encodings_with_row_padding(encoding, convert, pad):
    rgb = rgb_frame()
    pixels = rgb if convert is None else cv2.cvtColor(rgb, convert)
    out = image_to_rgb(make_image(pixels, encoding, pad=pad))
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_mono8_is_replicated_to_three_channels():
    gray = RNG.integers(0, 256, (5, 9), dtype=np.uint8)
    out = image_to_rgb(make_image(gray, "mono8", pad=3))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_honours_byte_order_and_scales_like_cv_bridge(bigendian):
    values = np.array([[0, 1, 128, 129, 257, 32896], [65535, 65534, 1000, 40000, 385, 386]], np.uint16)
    msg = make_image(values, "mono16", pad=2, bigendian=bigendian)
    raw = image_to_array(msg)
    np.testing.assert_array_equal(raw.astype(np.uint16), values)
    out = image_to_rgb(msg)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)
    assert expected[0].tolist() == [0, 0, 0, 1, 1, 128]


def test_scale_16_to_8_matches_rounding_on_every_value():
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(scale_16_to_8(every), np.round(every * (255 / 65535)).astype(np.uint8))


def yuv_pixel(rgb):
    """BT.601 limited-range Y, U, V of one RGB colour (what OpenCV's YUV422 decoder inverts)."""
    r, g, b = (float(v) for v in rgb)
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return [int(round(c)) for c in (y, u, v)]


@pytest.mark.parametrize("encoding,order", [("yuv422", "UYVY"), ("uyvy", "UYVY"),
                                            ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")])
def test_yuv422_variants_decode_their_byte_order(encoding, order):
    left, right = (200, 40, 40), (30, 60, 220)  # red-ish left half, blue-ish right half
    h, w = 4, 8
    frame = np.zeros((h, w, 2), np.uint8)
    for x0, colour in ((0, left), (w // 2, right)):
        y, u, v = yuv_pixel(colour)
        pair = {"UYVY": [u, y, v, y], "YUYV": [y, u, y, v]}[order]
        frame[:, x0: x0 + w // 2] = np.tile(np.array(pair, np.uint8).reshape(2, 2), (w // 4, 1))
    out = image_to_rgb(make_image(frame, encoding, pad=4))
    assert out.shape == (h, w, 3)
    np.testing.assert_allclose(out[:, : w // 2].reshape(-1, 3).mean(0), left, atol=3)
    np.testing.assert_allclose(out[:, w // 2:].reshape(-1, 3).mean(0), right, atol=3)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image through a Bayer colour filter named by its top-left 2×2 block."""
    index = {"r": 0, "g": 1, "b": 2}
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[colour]]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_patterns_demosaic_to_the_true_colour(pattern, bits):
    colour = np.array([200, 120, 40], np.float64)
    dtype = np.uint8 if bits == 8 else np.uint16
    scale = 1 if bits == 8 else 257  # 16-bit value v×257 maps back to v
    rgb = np.broadcast_to((colour * scale).astype(dtype), (8, 10, 3)).copy()
    out = image_to_rgb(make_image(mosaic(rgb, pattern), f"bayer_{pattern}{bits}", pad=2))
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2:-2, 2:-2].reshape(-1, 3), np.broadcast_to(colour, (24, 3)))


def test_every_camera_encoding_decodes():
    for encoding in CAMERA_ENCODINGS:
        channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(encoding, 1)
        if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
            channels = 2
        dtype = np.uint16 if encoding.endswith("16") else np.uint8
        shape = (4, 6) if channels == 1 else (4, 6, channels)
        assert image_to_rgb(make_image(np.zeros(shape, dtype), encoding)).shape == (4, 6, 3), encoding


# -- bad input -------------------------------------------------------------------------------------

def good_rgb8(**fields):
    msg = make_image(rgb_frame(4, 5), "rgb8")
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize("fields,match", [
    ({"encoding": "hsv8"}, r"encoding 'hsv8' is not supported; accepted: rgb8, bgr8"),
    ({"encoding": "32FC1", "step": 20}, r"encoding '32FC1' is not a camera image"),
    ({"step": 14}, r"step 14 is smaller than width × bytes per pixel = 5 × 3 = 15"),
    ({"data": bytes(59)}, r"data has 59 bytes, fewer than step × height = 15 × 4 = 60"),
    ({"width": 0}, r"empty image: width 0, height 4"),
    ({"height": 0}, r"empty image: width 5, height 0"),
    ({"width": MAX_IMAGE_SIDE + 1, "step": 3 * (MAX_IMAGE_SIDE + 1)}, r"exceeds the largest accepted side"),
    ({"height": 2**31}, r"5×2147483648 = 10737418240 pixels exceeds max_image_pixels 16777216"),
])
def test_bad_images_raise_a_clear_error(fields, match):
    with pytest.raises(ImageDecodeError, match=match):
        image_to_rgb(good_rgb8(**fields))


def test_odd_width_yuv422_is_rejected():
    with pytest.raises(ImageDecodeError, match="width must be even, got 5"):
        image_to_rgb(make_image(np.zeros((2, 5, 2), np.uint8), "yuv422"))


# -- compressed ------------------------------------------------------------------------------------

def smooth_rgb(h=32, w=48):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 5, y * 7, 255 - x * 5], axis=2).clip(0, 255).astype(np.uint8)


def test_png_round_trips_exactly_and_jpeg_closely():
    rgb = smooth_rgb()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    png = SimpleNamespace(format="png", data=cv2.imencode(".png", bgr)[1].tobytes())
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    jpeg = SimpleNamespace(format="rgb8; jpeg compressed bgr8",
                           data=cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    out = compressed_to_rgb(jpeg)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("msg,match", [
    (SimpleNamespace(format="jpeg", data=b"\xff\xd8 not really a jpeg " * 10),
     r"cannot read the image size from the header of 210 bytes of compressed data"),
    (SimpleNamespace(format="jpeg", data=b""), r"compressed image has no data"),
    (SimpleNamespace(format="16UC1; compressedDepth png", data=b"\x00" * 16),
     r"depth map, not a camera image"),
])
def test_undecodable_compressed_images_raise(msg, match):
    with pytest.raises(ImageDecodeError, match=match):
        compressed_to_rgb(msg)


def jpeg_header(width, height):
    """The start of a baseline JPEG up to its frame header (SOF0): all a header reader needs."""
    sof = struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + sof + b"\xff\xd9"


@pytest.mark.parametrize("width,height", [(640, 480), (8192, 8192), (16000, 5000)])
def test_compressed_image_size_reads_the_header_only(width, height):
    assert compressed_image_size(jpeg_header(width, height)) == (width, height)


def test_a_compressed_frame_over_the_pixel_limit_is_refused_without_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(codec.cv2, "imdecode", lambda *a: decoded.append(1))
    for width, height, match in [  # the user's limit is quoted, not Pillow's (178956970 pixels)
            (30000, 20000, r"30000×20000 = 600000000 pixels exceeds max_image_pixels 16777216"),
            (16385, 100, r"16385×100 pixels exceeds the largest accepted side 16384"),
            (8192, 8192, r"8192×8192 = 67108864 pixels exceeds max_image_pixels 16777216")]:
        msg = SimpleNamespace(format="jpeg", data=jpeg_header(width, height))
        start = time.perf_counter()
        with pytest.raises(ImageDecodeError, match=match):
            compressed_to_rgb(msg)
        assert time.perf_counter() - start < 0.1
    assert decoded == []
    assert codec.PILImage.MAX_IMAGE_PIXELS == 89478485  # Pillow's own guard is back for everyone else


def test_the_pixel_limit_is_a_parameter():
    bgr = cv2.cvtColor(smooth_rgb(32, 48), cv2.COLOR_RGB2BGR)
    png = SimpleNamespace(format="png", data=cv2.imencode(".png", bgr)[1].tobytes())
    assert compressed_to_rgb(png, max_pixels=32 * 48).shape == (32, 48, 3)
    with pytest.raises(ImageDecodeError, match=r"48×32 = 1536 pixels exceeds max_image_pixels 1535"):
        compressed_to_rgb(png, max_pixels=32 * 48 - 1)
    raw = make_image(rgb_frame(6, 10), "rgb8")
    assert image_to_rgb(raw, max_pixels=60).shape == (6, 10, 3)
    with pytest.raises(ImageDecodeError, match=r"10×6 = 60 pixels exceeds max_image_pixels 59"):
        image_to_rgb(raw, max_pixels=59)


def test_a_header_that_lies_about_the_size_is_refused():
    bgr = cv2.cvtColor(smooth_rgb(32, 48), cv2.COLOR_RGB2BGR)
    data = bytearray(cv2.imencode(".png", bgr)[1].tobytes())
    data[16:24] = struct.pack(">II", 40, 32)  # IHDR width 48 → 40 (its CRC now wrong)
    with pytest.raises(ImageDecodeError):
        compressed_to_rgb(SimpleNamespace(format="png", data=bytes(data)))


# -- encoding outputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("pixels,encoding,step", [
    (np.arange(12, dtype=np.uint8).reshape(3, 4), "mono8", 4),
    (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "rgb8", 12),
    (np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), "32FC1", 16),
])
def test_fill_image_sets_fields_and_round_trips(pixels, encoding, step):
    msg = fill_image(SimpleNamespace(), pixels, encoding)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (3, 4, encoding, step)
    assert msg.is_bigendian == int(encoding == "32FC1" and sys.byteorder == "big")
    assert len(msg.data) == step * 3
    np.testing.assert_array_equal(image_to_array(msg), pixels)


def test_fill_image_rejects_a_mismatched_array():
    with pytest.raises(ValueError, match=r"32FC1 needs an H×W array of dtype float32; "
                                         r"got shape \(3, 4\), dtype float64"):
        fill_image(SimpleNamespace(), np.zeros((3, 4)), "32FC1")
    with pytest.raises(ValueError, match=r"rgb8 needs an H×W×3 array of dtype uint8; got shape \(3, 4\)"):
        fill_image(SimpleNamespace(), np.zeros((3, 4), np.uint8), "rgb8")


def test_fill_image_on_a_real_sensor_msgs_image():
    msg_module = pytest.importorskip("sensor_msgs.msg", reason="needs sensor_msgs (ros-sensor-msgs)")
    anomaly = RNG.standard_normal((7, 9)).astype(np.float32)
    msg = fill_image(msg_module.Image(), anomaly, "32FC1")
    np.testing.assert_array_equal(image_to_array(msg), anomaly)
    rgb = rgb_frame(5, 3)
    np.testing.assert_array_equal(image_to_rgb(fill_image(msg_module.Image(), rgb, "rgb8")), rgb)


# -- cross-check with ROS 2 cv_bridge where it works -----------------------------------------------

def ros2_cv_bridge():
    try:
        from cv_bridge import CvBridge
        from sensor_msgs.msg import Image
        bridge = CvBridge()
        bridge.imgmsg_to_cv2(fill_image(Image(), np.zeros((2, 2, 3), np.uint8), "rgb8"), "rgb8")
    except Exception as exc:  # noqa: BLE001 - absent, or the broken PyPI package
        pytest.skip(f"no working ROS 2 cv_bridge here ({type(exc).__name__}: {exc})")
    return bridge


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16",
                                      "yuv422", "yuv422_yuy2", "bayer_rggb8", "bayer_bggr8",
                                      "bayer_gbrg8", "bayer_grbg8"])
def test_codec_matches_cv_bridge(encoding):
    bridge = ros2_cv_bridge()
    from sensor_msgs.msg import Image

    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "yuv422": 2, "yuv422_yuy2": 2}.get(encoding, 1)
    dtype = np.uint16 if encoding == "mono16" else np.uint8
    shape = (6, 8) if channels == 1 else (6, 8, channels)
    pixels = RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    fake = make_image(pixels, encoding, pad=4)
    msg = Image(height=fake.height, width=fake.width, encoding=encoding, is_bigendian=0, step=fake.step)
    msg.data = fake.data
    np.testing.assert_array_equal(image_to_rgb(msg), bridge.imgmsg_to_cv2(msg, "rgb8"))
