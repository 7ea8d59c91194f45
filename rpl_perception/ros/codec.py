"""The image codec under its earlier name: it is ROS-free and lives in :mod:`rpl_perception.image_codec`."""

from ..image_codec import (
    CAMERA_ENCODINGS,
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    compressed_image_size,
    compressed_to_rgb,
    fill_image,
    image_to_array,
    image_to_rgb,
)

__all__ = ["ImageDecodeError", "CAMERA_ENCODINGS", "DEFAULT_MAX_PIXELS", "image_to_array", "image_to_rgb",
           "compressed_image_size", "compressed_to_rgb", "fill_image"]
