"""Reading, checking and resizing camera frames on the host (numpy + OpenCV, no torch)."""

from pathlib import Path

import cv2
import numpy as np

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_SIDE", "UnreadableImage", "decode_image", "read_image", "read_rgb",
           "as_rgb", "resize_rgb", "resize_labels", "resize_scores"]

#: file suffixes read as images wherever a folder of images is taken (all OpenCV reads)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: longest side accepted: larger frames are almost surely corrupt headers, not cameras
MAX_IMAGE_SIDE = 16384



class UnreadableImage(OSError, ValueError):
    """An image file that is missing, truncated or cannot be decoded.

    An ``OSError`` (a file problem) and a ``ValueError`` (bad input, which the CLI reports in one
    line), so that either kind of handler catches it.
    """


def decode_image(data: bytes, source, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode encoded image bytes → RGB (or RGBA with ``cv2.IMREAD_UNCHANGED``) uint8 array.

    A JPEG without its end-of-image marker is reported as truncated: OpenCV would otherwise
    return it with the missing part filled grey.
    """
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise UnreadableImage(f"{source}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise UnreadableImage(f"{source}: not a decodable image (truncated or corrupt)")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """An image file → RGB uint8 (RGBA with ``cv2.IMREAD_UNCHANGED``); :class:`UnreadableImage` if not."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, path, flags)


def read_rgb(path) -> np.ndarray:
    """An image file as an H×W×3 RGB uint8 array (16-bit files scaled to 8 bit); a missing,
    truncated or undecodable file raises :class:`UnreadableImage`."""
    return read_image(path, cv2.IMREAD_COLOR)


_ACCEPTED = "an H×W×3 RGB, H×W×4 RGBA or H×W gray numpy array of dtype uint8"


def as_rgb(image) -> np.ndarray:
    """Validate a frame and return it as a contiguous H×W×3 uint8 RGB array.

    Accepts H×W×3 RGB, H×W×4 RGBA (alpha dropped), H×W or H×W×1 gray (replicated).
    Anything else raises ``ValueError`` naming what was received and what is accepted.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected {_ACCEPTED}; got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected {_ACCEPTED}; got dtype {image.dtype} (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"expected {_ACCEPTED}; got shape {image.shape}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image: shape {image.shape}")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise ValueError(f"image of {w}×{h} pixels exceeds the largest accepted side "
                         f"{MAX_IMAGE_SIDE}; is the message header corrupt?")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(image)


def resize_rgb(rgb: np.ndarray, size) -> np.ndarray:
    """Bilinear resize to ``size`` = (width, height), as the segmenter was trained."""
    w, h = size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of a label map (labels are never blended)."""
    w, h = size
    if labels.shape[1] == w and labels.shape[0] == h:
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def resize_scores(scores: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of a float32 score map."""
    w, h = size
    if scores.shape[1] == w and scores.shape[0] == h:
        return scores
    return cv2.resize(scores, (w, h), interpolation=cv2.INTER_LINEAR)
