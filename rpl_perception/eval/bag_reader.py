"""Reading the bags people record: rosbag2 folders (sqlite3 or MCAP, any compression), bare ``.mcap``
/ ``.db3`` files and ROS 1 ``.bag`` files, all through ``rosbags``' :class:`~rosbags.highlevel.AnyReader`.

Camera topics are ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` (JPEG, PNG; depth formats
such as ``compressedDepth`` are refused by name); both decode through :mod:`rpl_perception.image_codec`.

Two kinds of bad input, kept apart:

* a damaged bag (truncated file, malformed database, missing data file, unreadable metadata) raises
  :class:`DamagedBagError`: one line naming the file and the cause (for a truncated MCAP file, the
  command that recovers it);
* a malformed message among good ones (bytes that do not deserialise, an image that does not decode)
  is skipped and noted in a :class:`SkipLog` (topic, index, stamp, reason) where one is given.
"""

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..image_codec import ImageDecodeError, compressed_image_size, compressed_to_rgb, image_to_array, image_to_rgb

__all__ = ["IMAGE_MSGTYPE", "COMPRESSED_MSGTYPE", "IMAGE_MSGTYPES", "DamagedBagError", "SkippedMessage", "SkipLog",
           "BagImage", "TopicSummary", "open_bag", "bag_topics", "resolve_topic", "camera_topic", "inspect_bag",
           "read_images", "decode_image", "stamp_to_ns", "frame_rate"]

IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_MSGTYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_MSGTYPES = (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)
#: ROS 1 bags name the same types without "msg/"
_ROS1_NAMES = {"sensor_msgs/Image": IMAGE_MSGTYPE, "sensor_msgs/CompressedImage": COMPRESSED_MSGTYPE}


class DamagedBagError(ValueError):
    """A bag (or one of its files) that cannot be read at all."""


@dataclass
class SkippedMessage:
    topic: str
    index: int  # the message's position on its topic, from 0
    stamp_ns: int  # header stamp where it could be read, else the bag time
    reason: str


@dataclass
class SkipLog:
    """Messages skipped as malformed; the first ``keep`` are kept by name, all are counted."""
    keep: int = 100
    count: int = 0
    messages: List[SkippedMessage] = field(default_factory=list)

    def add(self, message: SkippedMessage) -> None:
        self.count += 1
        if len(self.messages) < self.keep:
            self.messages.append(message)

    def summary(self) -> dict:
        return {"count": self.count, "messages": [vars(m) for m in self.messages]}


@dataclass
class BagImage:
    """One decoded image message."""
    topic: str
    stamp_ns: int  # header stamp
    log_time_ns: int  # bag (receive) time
    frame_id: str
    encoding: str  # Image encoding, or the CompressedImage format (e.g. "jpeg")
    pixels: np.ndarray  # H×W×3 RGB for camera frames, else as stored (mono8 H×W, 32FC1 float32 H×W)
    #: a CompressedImage's recorded bytes (live replay sends them as they were recorded); None for Image
    compressed: Optional[bytes] = None


class TopicSummary(NamedTuple):
    """What ``bag info`` lists per topic; encoding and size from the topic's first message (images only)."""
    topic: str
    msgtype: str
    count: int
    encoding: str = ""  # Image encoding or CompressedImage format
    size: Optional[Tuple[int, int]] = None  # (width, height)
    problem: str = ""  # why the first message could not be read


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (anything with ``sec`` and ``nanosec``; ROS 1: ``nsec``) → nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(getattr(stamp, "nanosec", getattr(stamp, "nsec", 0)))


def _msgtype(name: Optional[str]) -> str:
    return _ROS1_NAMES.get(name or "", name or "?")


def _data_files(path: Path) -> List[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3", ".zstd"))
    return [path]


def _damaged(path: Path, cause: str) -> DamagedBagError:
    """One line: which file, what is wrong, and how to recover a truncated MCAP file."""
    cause = " ".join(cause.split())  # YAML errors span several lines: one line for the CLI
    files = _data_files(path)
    name = files[0] if len(files) == 1 and "metadata" not in cause else path
    line = f"damaged bag {name}: {cause.rstrip('.')}"
    if str(name).endswith(".mcap") and "magic" in cause.lower():
        line += (f" (an MCAP file cut short, e.g. by a recorder that was killed); recover what it holds with "
                 f"`mcap recover {name} -o {name.with_suffix('')}-recovered.mcap`")
    elif str(name).endswith(".db3") and "malformed" in cause:
        line += f"; `sqlite3 {name} .recover` salvages what it can"
    elif str(name).endswith(".bag"):
        line += f" (a ROS 1 bag cut short? `rosbag reindex {name}` rebuilds the index of one that was not closed)"
    return DamagedBagError(line)


def _reader_errors() -> tuple:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error

    return AnyReaderError, Reader1Error, Reader2Error, sqlite3.DatabaseError, EOFError


@contextmanager
def open_bag(path):
    """An open AnyReader of a rosbag2 folder, a bare ``.mcap`` / ``.db3`` file or a ROS 1 ``.bag`` file.

    Any failure of the storage, at opening or while reading, becomes a :class:`DamagedBagError`.
    """
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such bag: {path}")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise ValueError(f"{path} is not a bag: a rosbag2 folder holds metadata.yaml and .mcap or .db3 files "
                         "(bare .mcap, .db3 and ROS 1 .bag files are read too)")
    if path.is_file() and path.suffix not in (".mcap", ".db3", ".bag"):
        raise ValueError(f"{path} is not a bag: accepted are rosbag2 folders, .mcap, .db3 and ROS 1 .bag files")
    errors = _reader_errors()
    try:
        reader = AnyReader([path], default_typestore=_typestore())
        reader.open()
    except errors as exc:
        raise _damaged(path, str(exc) or type(exc).__name__) from None
    try:
        yield reader
    except errors as exc:
        raise _damaged(path, str(exc) or type(exc).__name__) from None
    finally:
        reader.close()


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def bag_topics(path) -> Dict[str, Tuple[str, int]]:
    """topic → (message type, message count) of a bag (ROS 1 type names given as ROS 2 spells them)."""
    with open_bag(path) as reader:
        return {topic: (_msgtype(info.msgtype), info.msgcount) for topic, info in reader.topics.items()}


def resolve_topic(requested: str, available) -> Optional[str]:
    """The bag's name of ``requested``: exact, else equal up to the leading ``/`` (``camera/image_raw``
    is ``/camera/image_raw``; ROS 1 bags may store either). None where the bag has no such topic."""
    if requested in available:
        return requested
    matches = [t for t in available if t.lstrip("/") == requested.lstrip("/")]
    return matches[0] if matches else None


def camera_topic(path, requested: str) -> str:
    """The bag's name of the camera topic ``requested``, checked to hold camera frames (read before any
    model loads): an Image or CompressedImage topic whose first message is not a depth format."""
    topics = {s.topic: s for s in inspect_bag(path, only=requested)}
    name = resolve_topic(requested, topics)
    if name is None or topics[name].msgtype not in IMAGE_MSGTYPES:
        images = sorted(t for t, s in topics.items() if s.msgtype in IMAGE_MSGTYPES)
        problem = f"no topic {requested}" if name is None else f"topic {name} of type {topics[name].msgtype}"
        raise ValueError(f"bag {path} has {problem}; its image topics ({IMAGE_MSGTYPE}, {COMPRESSED_MSGTYPE}): "
                         f"{', '.join(images) or 'none'}")
    if "depth" in topics[name].encoding.lower():
        raise ValueError(f"topic {name} holds depth maps ({topics[name].encoding!r}), not camera frames; "
                         "accepted: Image in a camera encoding, CompressedImage jpeg / png")
    return name


def inspect_bag(path, only: Optional[str] = None) -> List[TopicSummary]:
    """Per topic: type, count and, for image topics, the first message's encoding / format and size.
    ``only``: read the first message of that topic alone (the others are listed without it)."""
    summaries = []
    with open_bag(path) as reader:
        for topic, info in sorted(reader.topics.items()):
            msgtype = _msgtype(info.msgtype)
            summary = TopicSummary(topic, msgtype, info.msgcount)
            wanted = only is None or resolve_topic(only, [topic]) is not None
            if msgtype in IMAGE_MSGTYPES and info.msgcount and wanted:
                summary = _first_image(reader, info.connections, summary)
            summaries.append(summary)
    return summaries


def _first_image(reader, connections, summary: TopicSummary) -> TopicSummary:
    for _, _, data in reader.messages(connections=connections):
        try:
            msg = reader.deserialize(data, connections[0].msgtype)
            if summary.msgtype == COMPRESSED_MSGTYPE:
                return summary._replace(encoding=msg.format, size=compressed_image_size(np.asarray(msg.data)))
            return summary._replace(encoding=msg.encoding, size=(int(msg.width), int(msg.height)))
        except Exception as exc:  # noqa: BLE001 - a malformed first message is listed, not fatal
            return summary._replace(problem=f"first message unreadable: {type(exc).__name__}: {exc}")
    return summary


def decode_image(msg, rgb: bool) -> np.ndarray:
    """An Image message (rclpy's or rosbags') → numpy: RGB for camera frames, else as stored,
    float32 and uint8 maps in native byte order (owning copies, not views of the message)."""
    if rgb:
        return np.array(image_to_rgb(msg))
    pixels = image_to_array(msg)
    return pixels.astype(pixels.dtype.newbyteorder("="))


def read_images(path, topics: Sequence[str], rgb_topics: Sequence[str] = (),
                skipped: Optional[SkipLog] = None) -> Iterator[BagImage]:
    """Decoded image messages of ``topics`` (Image or CompressedImage) in bag-time order. Topics in
    ``rgb_topics`` are decoded to H×W×3 RGB (camera frames); the others keep their own encoding.

    Raises ``ValueError`` naming the bag's image topics if one of ``topics`` is not among them. A
    message that does not deserialise or decode raises ``ValueError`` naming topic, index and stamp,
    or, with ``skipped``, is left out and noted there.
    """
    with open_bag(path) as reader:
        available = {t: _msgtype(info.msgtype) for t, info in reader.topics.items()}
        missing = [t for t in topics if available.get(t) not in IMAGE_MSGTYPES]
        if missing:
            images = sorted(t for t, kind in available.items() if kind in IMAGE_MSGTYPES)
            raise ValueError(f"bag {path} has no image topic {', '.join(missing)} ({IMAGE_MSGTYPE} or "
                             f"{COMPRESSED_MSGTYPE}); its image topics: {', '.join(images) or 'none'}")
        connections = [c for c in reader.connections if c.topic in topics]
        counts = dict.fromkeys(topics, 0)
        for connection, log_time, data in reader.messages(connections=connections):
            index = counts[connection.topic]
            counts[connection.topic] += 1
            try:
                yield _decode(reader, connection, log_time, data, connection.topic in rgb_topics)
            except _MalformedMessage as exc:
                problem = SkippedMessage(connection.topic, index, exc.stamp_ns if exc.stamp_ns is not None
                                         else log_time, exc.reason)
                if skipped is None:
                    raise ValueError(f"bag {path}: message #{index} on {problem.topic} (stamp {problem.stamp_ns} ns) "
                                     f"is malformed: {problem.reason}") from None
                skipped.add(problem)


class _MalformedMessage(Exception):
    def __init__(self, reason: str, stamp_ns: Optional[int] = None):
        super().__init__(reason)
        self.reason, self.stamp_ns = reason, stamp_ns


def _decode(reader, connection, log_time: int, data, rgb: bool) -> BagImage:
    stamp = None
    try:
        msg = reader.deserialize(data, connection.msgtype)
        stamp = stamp_to_ns(msg.header.stamp)
        if _msgtype(connection.msgtype) == COMPRESSED_MSGTYPE:
            raw = bytes(np.asarray(msg.data, np.uint8))
            pixels = compressed_to_rgb(msg)
            if not rgb:  # a compressed map (e.g. labels as PNG): one channel
                pixels = np.ascontiguousarray(pixels[:, :, 0])
            return BagImage(connection.topic, stamp, log_time, msg.header.frame_id, msg.format, pixels, raw)
        return BagImage(connection.topic, stamp, log_time, msg.header.frame_id, msg.encoding, decode_image(msg, rgb))
    except ImageDecodeError as exc:
        raise _MalformedMessage(str(exc), stamp) from None
    except Exception as exc:  # noqa: BLE001 - deserialisers raise many kinds on bad bytes
        raise _MalformedMessage(f"cannot deserialise {len(data)} bytes as {connection.msgtype} "
                                f"({type(exc).__name__}: {exc})", stamp) from None


def frame_rate(path, topic: str, default: float = 10.0) -> float:
    """Messages per second of ``topic`` over the bag's duration (the overlay video's rate), within 1–60;
    ``default`` where the bag lacks the topic or holds fewer than two of its messages."""
    with open_bag(path) as reader:
        name = resolve_topic(topic, reader.topics)
        count, duration_ns = (reader.topics[name].msgcount if name else 0), reader.duration
    if count < 2 or duration_ns <= 0:
        return default
    return float(min(60.0, max(1.0, (count - 1) / (duration_ns / 1e9))))
