"""ROS 2 bags of camera frames and ground truth, written and read with ``rosbags`` (no ROS install).

Topic layout (all ``sensor_msgs/msg/Image``, one message per frame, matched by header stamp):

* camera frames on the image topic, e.g. ``/cam/image_raw`` (rgb8 by default; any encoding of
  :data:`rpl_perception.image_codec.CAMERA_ENCODINGS` is read back as RGB);
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

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..image_codec import fill_image, image_to_array, image_to_rgb
from ..topics import output_topics, sibling_topic

__all__ = [
    "IMAGE_MSGTYPE", "STORAGE_PLUGINS", "DEFAULT_IMAGE_TOPIC", "label_topic_for",
    "semantic_label_topic_for", "output_topics", "ImageBagWriter", "BagFrame", "write_frames", "BagImage",
    "read_images", "bag_topics", "list_image_topics", "decode_image", "StampedFrame", "match_by_stamp",
    "stamp_to_ns", "ns_to_stamp",
]

IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
DEFAULT_IMAGE_TOPIC = "/cam/image_raw"
#: storage plugin names as ``ros2 bag record -s`` spells them
STORAGE_PLUGINS = ("mcap", "sqlite3")


# ----------------------------------------------------------------------------- topics

def label_topic_for(image_topic: str) -> str:
    """Anomaly ground truth beside the camera topic (mono8: 0 in, 1 anomaly, 255 void)."""
    return sibling_topic(image_topic, "labels")


def semantic_label_topic_for(image_topic: str) -> str:
    """Semantic ground truth beside the camera topic (mono8 Cityscapes train ids, 255 void)."""
    return sibling_topic(image_topic, "semantic_labels")


# ----------------------------------------------------------------------------- stamps

def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (anything with ``sec`` and ``nanosec``) → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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
    """Writes ``sensor_msgs/Image`` messages to a new rosbag2 (mcap or sqlite3).

    >>> with ImageBagWriter("out_bag", storage="mcap") as bag:      # doctest: +SKIP
    ...     bag.write("/cam/image_raw", rgb, stamp_ns, encoding="rgb8", frame_id="camera")

    On an exception inside the ``with`` block the half-written bag is closed as far as it got,
    so what was written stays readable.
    """

    def __init__(self, path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGE_PLUGINS:
            raise ValueError(f"unknown bag storage {storage!r}; choose one of {', '.join(STORAGE_PLUGINS)}")
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists already; choose a new bag path (bags are never overwritten)")
        self.path = path
        self._writer = Writer(path, version=Writer.VERSION_LATEST,
                              storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
        self._typestore = _typestore()
        types = self._typestore.types
        self._image, self._header, self._time = (types[IMAGE_MSGTYPE], types["std_msgs/msg/Header"],
                                                 types["builtin_interfaces/msg/Time"])
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
        log_time_ns = stamp_ns if log_time_ns is None else log_time_ns
        for name, value in (("stamp_ns", stamp_ns), ("log_time_ns", log_time_ns)):
            if not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be integer nanoseconds; got {value!r} ({type(value).__name__})")
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, IMAGE_MSGTYPE, typestore=self._typestore)
            self.counts[topic] = 0
        sec, nanosec = ns_to_stamp(stamp_ns)
        msg = self._image(header=self._header(stamp=self._time(sec=sec, nanosec=nanosec), frame_id=frame_id),
                          height=0, width=0, encoding="", is_bigendian=0, step=0, data=np.zeros(0, np.uint8))
        fill_image(msg, pixels, encoding)
        msg.data = np.frombuffer(msg.data, np.uint8)  # the codec fills rosidl's array('B'); rosbags wants numpy
        data = self._typestore.serialize_cdr(msg, IMAGE_MSGTYPE)
        self._writer.write(self._connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1


class BagFrame(NamedTuple):
    """One camera frame to write, with optional ground truth (H×W uint8, same size as the image)."""
    image: np.ndarray  # H×W×3 uint8 RGB
    label: Optional[np.ndarray] = None  # anomaly ground truth: 0 in, 1 anomaly, 255 void
    semantic: Optional[np.ndarray] = None  # Cityscapes train ids, 255 void


def write_frames(path, frames: Iterable[BagFrame], *, image_topic: str = DEFAULT_IMAGE_TOPIC,
                 rate_hz: float = 10.0, start_ns: int = 0, storage: str = "mcap", frame_id: str = "camera",
                 encoding: str = "rgb8") -> Dict[str, int]:
    """Write frames at ``rate_hz`` starting at ``start_ns``; ground truth on the sibling topics with
    the camera frame's stamp. Returns the message count per topic.

    ``encoding`` is ``rgb8`` or ``bgr8`` (what most camera drivers publish); ground truth is mono8.
    """
    if not rate_hz > 0:
        raise ValueError(f"rate must be > 0 Hz; got {rate_hz}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"camera encoding must be rgb8 or bgr8; got {encoding!r}")
    topics = {"label": label_topic_for(image_topic), "semantic": semantic_label_topic_for(image_topic)}
    period_ns = 1e9 / rate_hz
    with ImageBagWriter(path, storage) as bag:
        for index, frame in enumerate(frames):
            image = frame.image
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"frame {index}: expected an H×W×3 uint8 RGB image; got shape {image.shape}, "
                                 f"dtype {image.dtype}")
            stamp = start_ns + round(index * period_ns)
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


# ----------------------------------------------------------------------------- reading

@dataclass
class BagImage:
    """One decoded image message."""
    topic: str
    stamp_ns: int  # header stamp
    log_time_ns: int  # bag (receive) time
    frame_id: str
    encoding: str
    pixels: np.ndarray  # H×W×3 RGB for camera encodings, else as stored (mono8 H×W, 32FC1 float32 H×W)


def _open_reader(path):
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such bag: {path}")
    if not (path / "metadata.yaml").is_file():
        raise ValueError(f"{path} is not a rosbag2 bag (a folder holding metadata.yaml and .mcap or .db3 files)")
    return Reader(path)


def bag_topics(path) -> Dict[str, Tuple[str, int]]:
    """topic → (message type, message count) of a bag."""
    with _open_reader(path) as reader:
        return {topic: (info.msgtype, info.msgcount) for topic, info in reader.topics.items()}


def decode_image(msg, rgb: bool) -> np.ndarray:
    """An Image message (rclpy's or rosbags') → numpy: RGB for camera frames, else as stored,
    float32 and uint8 maps in native byte order (owning copies, not views of the message)."""
    if rgb:
        return np.array(image_to_rgb(msg))
    pixels = image_to_array(msg)
    return pixels.astype(pixels.dtype.newbyteorder("="))


def read_images(path, topics: Sequence[str], rgb_topics: Sequence[str] = ()) -> Iterator[BagImage]:
    """Decoded image messages of ``topics`` in bag-time order. Topics in ``rgb_topics`` are decoded
    to H×W×3 RGB (camera frames); the others keep their own encoding (labels, scores).

    Raises ``ValueError`` naming the bag's image topics if one of ``topics`` is not among them.
    """
    with _open_reader(path) as reader:
        available = {t: info.msgtype for t, info in reader.topics.items()}
        missing = [t for t in topics if available.get(t) != IMAGE_MSGTYPE]
        if missing:
            images = sorted(t for t, kind in available.items() if kind == IMAGE_MSGTYPE)
            raise ValueError(f"bag {path} has no {IMAGE_MSGTYPE} topic {', '.join(missing)}; "
                             f"its image topics: {', '.join(images) or 'none'}")
        typestore = _typestore()
        connections = [c for c in reader.connections if c.topic in topics]
        for connection, log_time, data in reader.messages(connections=connections):
            msg = typestore.deserialize_cdr(data, connection.msgtype)
            yield BagImage(connection.topic, stamp_to_ns(msg.header.stamp), log_time, msg.header.frame_id,
                           msg.encoding, decode_image(msg, connection.topic in rgb_topics))


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
    return sorted(t for t, (kind, _) in bag_topics(path).items() if kind == IMAGE_MSGTYPE)
