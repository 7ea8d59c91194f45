"""One input camera of the node: its subscription, output publishers, counts and log throttle.

The subscription's reliability matches what the camera's publishers offer, as rosbag2 does, unless
the user fixed it (``qos_reliability``, or per topic ``qos_overrides.<topic>.subscription.reliability``):
the node subscribes once it discovers a publisher, reliable where every publisher is reliable (a
reliable publisher then repairs what DDS loses), best effort otherwise, and subscribes anew when a
publisher joins that the current reliability would not match. Callbacks get the serialised message
(``raw``): deserialising is left to the camera's decoder thread, for the frames that are not replaced.
"""

import copy
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions, QoSPolicyKind
from sensor_msgs.msg import CompressedImage, Image

from ..topics import is_compressed, output_topics
from .health import HealthLimits
from .parameters import AUTO
from .stats import WARN, CameraStats, input_problems
from .throttle import ProblemThrottle

__all__ = ["AUTO", "RELIABILITIES", "Camera"]

#: reliability parameter value → rclpy policy (AUTO: match the publishers)
RELIABILITIES = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE,
                 "system_default": ReliabilityPolicy.SYSTEM_DEFAULT, AUTO: None}
#: depth and history through rclpy's own overrides; reliability the node resolves itself (AUTO)
INPUT_OVERRIDES = QoSOverridingOptions([QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH])


def _type_name(msg_type) -> str:
    module = msg_type.__module__.split(".")[0]
    return f"{module}/msg/{msg_type.__name__}"


class Camera:
    """``on_message(camera, raw_bytes)`` is the subscription callback."""

    def __init__(self, node, topic: str, reliability: str, depth: int, output_qos: QoSProfile,
                 on_message: Callable[["Camera", bytes], None], limits: Optional[HealthLimits] = None):
        self.node = node
        self.topic = node.resolve_topic_name(topic)  # after remapping: what the camera publishes on
        self.msg_type = CompressedImage if is_compressed(topic) else Image
        self.stats = CameraStats(time.monotonic(), limits=limits)
        self.throttle = ProblemThrottle()
        self.lock = threading.Lock()  # throttle and frame_id, from the decoder and worker threads
        self.frame_id = ""
        self.publishers: Dict[str, object] = {
            # a copy each: rclpy writes the qos_overrides into the profile it is given
            name: node.create_publisher(Image, out, copy.copy(output_qos),
                                        qos_overriding_options=QoSOverridingOptions.with_default_policies())
            for name, out in output_topics(self.topic).items()}
        self._on_message = on_message
        self._depth = depth
        name = f"qos_overrides.{self.topic}.subscription.reliability"
        choice = node.declare_parameter(name, reliability, ParameterDescriptor(
            name=name, read_only=True, additional_constraints=", ".join(RELIABILITIES),
            description=f"reliability of the subscription to {self.topic}; {AUTO}: match its publishers"
        )).value
        if choice not in RELIABILITIES:
            raise ValueError(f"{name} {choice!r} is unknown; choose one of {', '.join(RELIABILITIES)}")
        self.fixed: Optional[ReliabilityPolicy] = RELIABILITIES[choice]
        self.subscription = None
        self._matched_since: Optional[float] = None
        self._offered: List[str] = []
        if self.fixed is not None:
            self._subscribe(self.fixed)

    # -- the subscription ------------------------------------------------------------------------

    @property
    def reliability(self) -> str:
        if self.subscription is None:
            return "none yet (waiting for a publisher)"
        return self.subscription.qos_profile.reliability.name.lower()

    def _subscribe(self, reliability: ReliabilityPolicy) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._depth, reliability=reliability)
        self.subscription = self.node.create_subscription(
            self.msg_type, self.topic, lambda raw: self._on_message(self, raw), qos, raw=True,
            qos_overriding_options=INPUT_OVERRIDES,
            event_callbacks=SubscriptionEventCallbacks(
                message_lost=lambda info: self.stats.on_lost(info.total_count_change)))

    def _publishers(self) -> Tuple[List[str], List[str]]:
        """The reliability each publisher of our type offers; the types of the others."""
        infos = self.node.get_publishers_info_by_topic(self.topic)
        ours = _type_name(self.msg_type)
        return ([info.qos_profile.reliability.name.lower() for info in infos if info.topic_type == ours],
                [info.topic_type for info in infos if info.topic_type != ours])

    def update(self, now: float) -> None:
        """Follow the graph (about twice a second): subscribe to match the publishers in AUTO mode."""
        self._offered, _ = self._publishers()
        if self.fixed is None and self._offered:
            wanted = (ReliabilityPolicy.RELIABLE if all(r == "reliable" for r in self._offered)
                      else ReliabilityPolicy.BEST_EFFORT)
            current = self.subscription.qos_profile.reliability if self.subscription else None
            if wanted != current:
                self._subscribe(wanted)
                self.node.get_logger().info(
                    f"{self.topic}: subscribed {wanted.name.lower()} to match its publishers "
                    f"({', '.join(self._offered)})")
        matched = self.subscription.get_publisher_count() if self.subscription else 0
        if not matched:
            self._matched_since = None
        elif self._matched_since is None:
            self._matched_since = now

    def problems(self, now: float) -> List[Tuple[int, str]]:
        """Graph-level reasons why frames may not arrive (for the diagnostics)."""
        offered, other_types = self._publishers()
        if other_types and not offered:
            return [(WARN, f"the topic's publishers send {', '.join(sorted(set(other_types)))}, "
                           f"not {_type_name(self.msg_type)} (a topic ending in /compressed is read as "
                           "sensor_msgs/CompressedImage, any other as sensor_msgs/Image)")]
        matched = self.subscription.get_publisher_count() if self.subscription else 0
        return input_problems(publishers=len(offered), matched=matched, received=self.stats.total.received,
                              seconds_matched=None if self._matched_since is None else now - self._matched_since,
                              reliability=self.reliability, offered=offered)
