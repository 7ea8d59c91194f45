"""One input camera of the node: its subscription, output publishers, counts and log throttle.

The subscription's reliability matches what the camera's publishers offer, as rosbag2 does, unless
the user fixed it (``qos_reliability``, or per topic ``qos_overrides.<topic>.subscription.reliability``):
the node subscribes best effort from start-up (it matches any publisher, and ``ros2 topic info -v`` /
``ros2 node info`` show the input to wire against before any camera runs), switches to reliable once
every publisher is reliable (a reliable publisher then repairs what DDS loses), and back to best effort
when a best-effort publisher joins. Callbacks get the serialised message
(``raw``): deserialising is left to the camera's decoder thread, for the frames that are not replaced.
"""

import copy
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions, QoSPolicyKind
from sensor_msgs.msg import CompressedImage, Image

from ..topics import is_compressed, output_topics
from .demand import has_readers
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
#: a subscription with the reliability the publishers need takes over at the latest after this long
SWITCH_WAIT_S = 3.0


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
        #: publishers of this camera's other outputs (e.g. the obstacle outputs), registered by the node
        self.other_publishers: List[Mapping[str, object]] = []
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
        self._matched_since: Optional[float] = None
        self._offered: List[str] = []
        self._pending, self._pending_since = None, 0.0  # a subscription taking over (see _switch)
        self.subscription = self._subscribe(ReliabilityPolicy.BEST_EFFORT if self.fixed is None else self.fixed)

    # -- the subscription ------------------------------------------------------------------------

    def is_read(self) -> bool:
        """Something subscribes to one of this camera's outputs (else the camera is idle: :mod:`.demand`)."""
        return any(has_readers(publishers) for publishers in (self.publishers, *self.other_publishers))

    @property
    def reliability(self) -> str:
        return self.subscription.qos_profile.reliability.name.lower()

    def _subscribe(self, reliability: ReliabilityPolicy):
        """A new subscription; only the current one (``self.subscription``) delivers frames and losses."""
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._depth, reliability=reliability)
        created = []

        def current() -> bool:
            return bool(created) and created[0] is self.subscription

        created.append(self.node.create_subscription(
            self.msg_type, self.topic, lambda raw: current() and self._on_message(self, raw), qos, raw=True,
            qos_overriding_options=INPUT_OVERRIDES,
            event_callbacks=SubscriptionEventCallbacks(
                message_lost=lambda info: current() and self.stats.on_lost(info.total_count_change))))
        return created[0]

    def _switch(self, wanted: ReliabilityPolicy, now: float) -> None:
        """Change the subscription's reliability without a gap: the new one takes over once it has matched
        every publisher (or after SWITCH_WAIT_S); the old one delivers until then."""
        if self._pending is not None and self._pending.qos_profile.reliability != wanted:
            self.node.destroy_subscription(self._pending)
            self._pending = None
        if self._pending is None:
            if wanted == self.subscription.qos_profile.reliability:
                return
            self._pending, self._pending_since = self._subscribe(wanted), now
            return
        if self._pending.get_publisher_count() < len(self._offered) and now - self._pending_since < SWITCH_WAIT_S:
            return
        old, self.subscription, self._pending = self.subscription, self._pending, None
        self.node.destroy_subscription(old)
        self.node.get_logger().info(f"{self.topic}: subscribed {wanted.name.lower()} to match its publishers "
                                    f"({', '.join(self._offered)})")

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
            self._switch(wanted, now)
        matched = self.subscription.get_publisher_count()
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
        matched = self.subscription.get_publisher_count()
        return input_problems(publishers=len(offered), matched=matched, received=self.stats.total.received,
                              seconds_matched=None if self._matched_since is None else now - self._matched_since,
                              reliability=self.reliability, offered=offered)
