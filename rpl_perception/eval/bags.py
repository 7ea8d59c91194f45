"""ROS 2 bags of camera frames and ground truth, written and read with ``rosbags`` (no ROS install).

Reading (:mod:`.bag_reader`, re-exported here) takes any bag a camera driver records; writing makes
rosbag2 bags (mcap or sqlite3, optionally zstd-compressed) in this layout, one message per frame,
matched by header stamp:

* camera frames on the image topic, e.g. ``/cam/image_raw`` as ``sensor_msgs/Image`` (rgb8 by default;
  any encoding of :data:`rpl_perception.image_codec.CAMERA_ENCODINGS` is read back as RGB), or
  ``/cam/image_raw/compressed`` as ``sensor_msgs/CompressedImage`` (jpeg or png);
* anomaly ground truth on the sibling ``labels`` topic, e.g. ``/cam/labels``: mono8 with
  0 = in-distribution, 1 = anomaly, 255 = void — the values the dataset readers of
  :mod:`rpl_perception.eval.datasets` produce (RoadAnomaly's raw 2 is already mapped to 1);
* semantic ground truth (Cityscapes train ids, 255 = void) on the sibling ``semantic_labels``
  topic, e.g. ``/cam/semantic_labels``;
* the node's outputs, where a bag holds them (``ros2 bag record`` next to ``ros2 bag play``), on
  the sibling topics :func:`rpl_perception.topics.output_topics` names: ``/cam/anomaly``
  (32FC1 score) and ``/cam/semantic`` (mono8 train ids).

Ground-truth messages carry exactly the header (stamp and frame id) of their camera frame, and
each message's bag (log) time equals its header stamp. Images go through the node's codec
(:mod:`rpl_perception.image_codec`), so the bag holds byte-for-byte what a camera driver publishes.
"""

from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..image_codec import fill_image
from ..topics import output_topics, sibling_topic
from .bag_reader import (
    COMPRESSED_MSGTYPE,
    IMAGE_MSGTYPE,
    IMAGE_MSGTYPES,
    BagImage,
    bag_topics,
    decode_image,
    read_images,
    stamp_to_ns,
)

__all__ = [
    "IMAGE_MSGTYPE", "COMPRESSED_MSGTYPE", "STORAGE_PLUGINS", "COMPRESSIONS", "COMPRESSED_FORMATS", "DEFAULT_IMAGE_TOPIC", "label_topic_for",
    "semantic_label_topic_for", "output_topics", "ImageBagWriter", "BagFrame", "write_frames", "BagImage",
    "read_images", "bag_topics", "list_image_topics", "decode_image", "StampedFrame", "match_by_stamp",
    "stamp_to_ns", "ns_to_stamp",
]

DEFAULT_IMAGE_TOPIC = "/cam/image_raw"
#: storage plugin names as ``ros2 bag record -s`` spells them
STORAGE_PLUGINS = ("mcap", "sqlite3")
#: zstd compression modes as ``ros2 bag record --compression-mode`` spells them
COMPRESSIONS = ("none", "file", "message")
#: CompressedImage formats the writer encodes (OpenCV's file extensions)
COMPRESSED_FORMATS = ("jpeg", "png")


# ----------------------------------------------------------------------------- topics

def label_topic_for(image_topic: str) -> str:
    """Anomaly ground truth beside the camera topic (mono8: 0 in, 1 anomaly, 255 void)."""
    return sibling_topic(image_topic, "labels")


def semantic_label_topic_for(image_topic: str) -> str:
    """Semantic ground truth beside the camera topic (mono8 Cityscapes train ids, 255 void)."""
    return sibling_topic(image_topic, "semantic_labels")


# ----------------------------------------------------------------------------- stamps

def ns_to_stamp(ns: int) -> Tuple[int, int]:
    """Integer nanoseconds → (sec, nanosec) as builtin_interfaces/Time holds them."""
    if ns < 0:
        raise ValueError(f"stamps must be >= 0 ns; got {ns}")
    return divmod(int(ns), 1_000_000_000)


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


# ----------------------------------------------------------------------------- writing

class ImageBagWriter:
    """Writes ``sensor_msgs/Image`` (and ``CompressedImage``) messages to a new rosbag2 (mcap or
    sqlite3; ``compression`` "file" or "message" compresses it with zstd as rosbag2 does).

    >>> with ImageBagWriter("out_bag", storage="mcap") as bag:      # doctest: +SKIP
    ...     bag.write("/cam/image_raw", rgb, stamp_ns, encoding="rgb8", frame_id="camera")

    On an exception inside the ``with`` block the half-written bag is closed as far as it got,
    so what was written stays readable.
    """

    def __init__(self, path, storage: str = "mcap", compression: str = "none"):
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        if storage not in STORAGE_PLUGINS:
            raise ValueError(f"unknown bag storage {storage!r}; choose one of {', '.join(STORAGE_PLUGINS)}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists already; choose a new bag path (bags are never overwritten)")
        self.path = path
        self._writer = Writer(path, version=Writer.VERSION_LATEST,
                              storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
        if compression != "none":
            self._writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
        self._typestore = _typestore()
        types = self._typestore.types
        self._image, self._compressed = types[IMAGE_MSGTYPE], types[COMPRESSED_MSGTYPE]
        self._header, self._time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
        self._connections = {}
        self.counts: Dict[str, int] = {}

    def __enter__(self) -> "ImageBagWriter":
        self._writer.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self._writer.close()

    def write(self, topic: str, pixels: np.ndarray, stamp_ns: int, *, encoding: str, frame_id: str = "",
              log_time_ns: Optional[int] = None) -> None:
        """One image message; its bag time is ``log_time_ns`` (default: the header stamp).

        Times are integer nanoseconds: a float cannot hold today's epoch to the nanosecond.
        """
        msg = self._image(header=self._header_of(stamp_ns, frame_id), height=0, width=0, encoding="",
                          is_bigendian=0, step=0, data=np.zeros(0, np.uint8))
        fill_image(msg, pixels, encoding)
        msg.data = np.frombuffer(msg.data, np.uint8)  # the codec fills rosidl's array('B'); rosbags wants numpy
        self.write_raw(topic, IMAGE_MSGTYPE, self._typestore.serialize_cdr(msg, IMAGE_MSGTYPE),
                       stamp_ns if log_time_ns is None else log_time_ns)

    def write_compressed(self, topic: str, rgb: Optional[np.ndarray], stamp_ns: int, *, fmt: str = "jpeg",
                         frame_id: str = "", log_time_ns: Optional[int] = None, encoded: Optional[bytes] = None) -> None:
        """One ``CompressedImage`` of an H×W×3 RGB frame, encoded as ``fmt`` (jpeg or png) by OpenCV, or
        of bytes ``encoded`` already (a recorded frame, kept as it was)."""
        import cv2

        if encoded is None:
            if fmt not in COMPRESSED_FORMATS:
                raise ValueError(f"compressed format must be one of {', '.join(COMPRESSED_FORMATS)}; got {fmt!r}")
            ok, data = cv2.imencode(f".{fmt}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(f"OpenCV cannot encode a {rgb.shape} frame as {fmt}")
            encoded = data.tobytes()
        msg = self._compressed(header=self._header_of(stamp_ns, frame_id), format=fmt,
                               data=np.frombuffer(encoded, np.uint8))
        self.write_raw(topic, COMPRESSED_MSGTYPE, self._typestore.serialize_cdr(msg, COMPRESSED_MSGTYPE),
                       stamp_ns if log_time_ns is None else log_time_ns)

    def write_raw(self, topic: str, msgtype: str, data: bytes, log_time_ns: int) -> None:
        """Serialised (CDR) bytes as one message of ``msgtype``, e.g. what another recorder stored."""
        if not isinstance(log_time_ns, (int, np.integer)):
            raise ValueError(f"log_time_ns must be integer nanoseconds; got {log_time_ns!r} "
                             f"({type(log_time_ns).__name__})")
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self.counts[topic] = 0
        self._writer.write(self._connections[topic], int(log_time_ns), bytes(data))
        self.counts[topic] += 1

    def _header_of(self, stamp_ns: int, frame_id: str):
        if not isinstance(stamp_ns, (int, np.integer)):
            raise ValueError(f"stamp_ns must be integer nanoseconds; got {stamp_ns!r} ({type(stamp_ns).__name__})")
        sec, nanosec = ns_to_stamp(stamp_ns)
        return self._header(stamp=self._time(sec=sec, nanosec=nanosec), frame_id=frame_id)


class BagFrame(NamedTuple):
    """One camera frame to write, with optional ground truth (H×W uint8, same size as the image)."""
    image: np.ndarray  # H×W×3 uint8 RGB
    label: Optional[np.ndarray] = None  # anomaly ground truth: 0 in, 1 anomaly, 255 void
    semantic: Optional[np.ndarray] = None  # Cityscapes train ids, 255 void


def write_frames(path, frames: Iterable[BagFrame], *, image_topic: str = DEFAULT_IMAGE_TOPIC,
                 rate_hz: float = 10.0, start_ns: int = 0, storage: str = "mcap", frame_id: str = "camera",
                 encoding: str = "rgb8", compression: str = "none") -> Dict[str, int]:
    """Write frames at ``rate_hz`` starting at ``start_ns``; ground truth on the sibling topics with
    the camera frame's stamp. Returns the message count per topic.

    ``encoding`` is ``rgb8`` or ``bgr8`` (what most camera drivers publish) for Image frames, or ``jpeg``
    / ``png`` for CompressedImage frames (give a topic ending in ``/compressed``, as image_transport
    names it, so that the node reads it as compressed); ground truth is mono8.
    """
    if not rate_hz > 0:
        raise ValueError(f"rate must be > 0 Hz; got {rate_hz}")
    if encoding not in ("rgb8", "bgr8", *COMPRESSED_FORMATS):
        raise ValueError(f"camera encoding must be rgb8, bgr8, jpeg or png; got {encoding!r}")
    topics = {"label": label_topic_for(image_topic), "semantic": semantic_label_topic_for(image_topic)}
    period_ns = 1e9 / rate_hz
    with ImageBagWriter(path, storage, compression) as bag:
        for index, frame in enumerate(frames):
            image = frame.image
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"frame {index}: expected an H×W×3 uint8 RGB image; got shape {image.shape}, "
                                 f"dtype {image.dtype}")
            stamp = start_ns + round(index * period_ns)
            if encoding in COMPRESSED_FORMATS:
                bag.write_compressed(image_topic, image, stamp, fmt=encoding, frame_id=frame_id)
            else:
                bag.write(image_topic, image[:, :, ::-1] if encoding == "bgr8" else image, stamp,
                          encoding=encoding, frame_id=frame_id)
            for kind in ("label", "semantic"):
                truth = getattr(frame, kind)
                if truth is None:
                    continue
                if truth.shape != image.shape[:2] or truth.dtype != np.uint8:
                    raise ValueError(f"frame {index}: {kind} must be an H×W uint8 map of the image's size "
                                     f"{image.shape[1]}×{image.shape[0]}; got shape {truth.shape}, "
                                     f"dtype {truth.dtype}")
                bag.write(topics[kind], truth, stamp, encoding="mono8", frame_id=frame_id)
        return dict(bag.counts)


# ----------------------------------------------------------------------------- matching

class StampedFrame(NamedTuple):
    """The messages of several topics that share one header stamp."""
    stamp_ns: int
    images: Dict[str, BagImage]  # topic → message; a topic is absent where its message never came
    complete: bool  # every required topic is present


def match_by_stamp(images: Iterable[BagImage], required: Sequence[str], max_pending: int = 64,
                   ordered: bool = False) -> Iterator[StampedFrame]:
    """Group messages by header stamp; yield a group as soon as every ``required`` topic has it.

    Groups still waiting when more than ``max_pending`` are open (the oldest first), or when the
    input ends, are yielded with ``complete=False``, so memory stays bounded however many outputs
    a recording lost. A second message of the same topic and stamp replaces the first.
    ``ordered``: yield groups in the order their first message came (a complete group waits for
    the older ones), e.g. camera frames of which only some carry ground truth, for replay.
    """
    pending: Dict[int, Dict[str, BagImage]] = {}  # insertion order = age
    required = set(required)
    for image in images:
        group = pending.setdefault(image.stamp_ns, {})
        group[image.topic] = image
        if ordered:
            while pending:
                stamp, oldest = next(iter(pending.items()))
                complete = required <= oldest.keys()
                if not complete and len(pending) <= max_pending:
                    break
                yield StampedFrame(stamp, pending.pop(stamp), complete)
        elif required <= group.keys():
            del pending[image.stamp_ns]
            yield StampedFrame(image.stamp_ns, group, True)
        elif len(pending) > max_pending:
            stamp = next(iter(pending))
            yield StampedFrame(stamp, pending.pop(stamp), False)
    for stamp, group in pending.items():
        yield StampedFrame(stamp, group, required <= group.keys())


def list_image_topics(path) -> List[str]:
    return sorted(t for t, (kind, _) in bag_topics(path).items() if kind in IMAGE_MSGTYPES)
