"""``anomaly_node``: the ROS 2 node ``rpl_anomaly``, a thin layer around :class:`AnomalySegmenter`.

For each input topic ``<prefix>/<name>`` (``sensor_msgs/Image``, or ``CompressedImage`` where the
name ends in ``/compressed``), after remapping, it publishes with the input's header unchanged:

* ``<prefix>/semantic``        mono8, Cityscapes train ids
* ``<prefix>/anomaly``         32FC1, the raw anomaly score at the input's size
* ``<prefix>/anomaly_mask``    mono8, 255 where the score is above ``anomaly_threshold``
* ``<prefix>/semantic_color``  rgb8
* ``<prefix>/overlay``         rgb8 camera image + heatmap + anomaly contour
* obstacles for planners (confidence, obstacle mask, detections, markers, ground points):
  :mod:`.object_outputs`

each only while something subscribes to it; a camera nobody reads is idle (:mod:`.demand`).

Callbacks only keep each camera's newest serialised frame; a decoder thread per camera turns it into
pixels and one worker runs every waiting frame, from all cameras, as one batch through one model
(:mod:`.pipeline`). Per-camera diagnostics go to ``/diagnostics`` once a second. Parameters: see
``PARAMETERS`` and ``config/anomaly.yaml``; ``anomaly_threshold`` and ``overlay_alpha`` can be set
while running.
"""

import gc
import os
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.utilities import get_rmw_implementation_identifier
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import CompressedImage

from ..backends import BackendUnavailable
from ..image import as_rgb
from ..image_codec import ImageDecodeError, compressed_to_rgb, image_to_rgb
from ..segmenter import AnomalySegmenter
from ..topics import check_topics, output_topics
from .camera import Camera
from .camera_pose import TfCameraPose
from .dds import QOS_FROM_XML, find_profile, profile_environment, profile_variable
from .dds_losses import LossLog, fix_hint, header_stamp_ns
from .diagnostics import diagnostics_message
from .health import HealthLimits, runs_on_gpu
from .interrupts import StoppableExecutor, ignore_interrupts_from_now_on, ignore_interrupts_while_serving
from .log_bridge import forward_python_logging
from .object_outputs import ObstacleConfig, ObstacleOutputs
from .outputs import publish_outputs
from .parameter_types import accept_integers_for_doubles
from .parameters import PARAMETERS, ParameterError, Settings, threshold_value
from .pipeline import FramePipeline
from .stats import ERROR, OK, StatusReport
from .usage import usage, wants_help

__all__ = ["NODE_NAME", "PARAMETERS", "ParameterError", "Settings", "AnomalyNode", "main"]

NODE_NAME = "rpl_anomaly"
DIAGNOSTICS_PERIOD_S = 1.0
GRAPH_PERIOD_S = 0.5
#: destroy_node waits at most this long for a batch in flight (it then finishes unpublished)
SHUTDOWN_WAIT_S = 1.0
#: outputs are reliable so that bags and RViz (reliable by default) both receive them
OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def segmenter_from_settings(settings: Settings) -> AnomalySegmenter:
    """The segmenter with the backend of the deployment parameters (dynamic batch 1..max_batch)."""
    try:
        segmenter = AnomalySegmenter.from_spec(settings.deployment)
        segmenter.backend  # noqa: B018 - created now: export / engine load or build, at start
    except (ValueError, BackendUnavailable, OSError) as exc:  # e.g. a bad size, no GPU, no engine
        raise ParameterError(str(exc)) from None
    return segmenter


class Frame(NamedTuple):
    message: bytes  # serialised: deserialised only if the frame is not replaced first
    received_ns: int  # node clock at receipt, the latency origin when the stamp is zero


class Decoded(NamedTuple):
    header: object
    rgb: np.ndarray
    received_ns: int


def deserialise(raw: bytes, msg_type):
    """The message from its CDR bytes; ImageDecodeError for bytes that are not one (any DDS writer can
    send those under the type's name)."""
    try:
        return deserialize_message(raw, msg_type)
    except Exception as exc:  # noqa: BLE001 - the typesupport raises several kinds
        raise ImageDecodeError(f"{len(raw)} bytes are not a {msg_type.__name__} message: {exc}") from None


class AnomalyNode(Node):
    """Semantic mask and anomaly heatmap for every camera in ``image_topics``, one shared model.

    Construct with rclpy ``Node`` keyword arguments (``parameter_overrides``, ``context``,
    ``namespace``, ``cli_args``, ...); raises :class:`ParameterError` on parameters it cannot start with.
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.segmenter: Optional[AnomalySegmenter] = None
        self._pipeline: Optional[FramePipeline] = None
        self.cameras: List[Camera] = []
        self.stopped_cleanly = True  # False once destroy_node left a batch running in a daemon thread
        self._log_bridge = forward_python_logging(self.get_logger())  # export/engine progress, fallbacks
        try:
            values = self._declare_parameters()
            self.settings = Settings.from_values(values)
            self.obstacle_config = ObstacleConfig.from_values(values)
            self._check_topic_names()
            self.get_logger().info(f"preparing {self.settings.deployment.describe()}")
            self.segmenter = segmenter_from_settings(self.settings)
            if self.settings.deployment.build_only:
                self.get_logger().info(f"build_only: ready ({self.segmenter.backend.describe()}); exiting")
                return
            self.threshold = self._threshold(self.settings.anomaly_threshold)
            self.overlay_alpha = self.settings.overlay_alpha
            self.display_range = self.segmenter.display_range
            self._warm_up()
            self.health_limits = HealthLimits.for_device(self.settings.min_output_rate_hz,
                                                         self.settings.output_timeout_s,
                                                         runs_on_gpu(self.segmenter.backend))
            self.cameras = [Camera(self, topic, self.settings.qos_reliability, self.settings.qos_depth,
                                   OUTPUT_QOS, self._on_image, self.health_limits)
                            for topic in self.settings.image_topics]
            ground_frame = self.obstacle_config.ground_frame
            tf_pose = TfCameraPose(self, ground_frame) if ground_frame else None
            self.obstacle_outputs = {camera: ObstacleOutputs(self, camera.topic, self.obstacle_config, OUTPUT_QOS,
                                                             self.segmenter.class_names, tf_pose)
                                     for camera in self.cameras}
            for camera, obstacles in self.obstacle_outputs.items():
                camera.other_publishers.append(obstacles.publishers)
        except ValueError as exc:  # e.g. a per-topic qos_overrides value
            self.destroy_node()
            raise ParameterError(str(exc)) from None
        except BaseException:
            self.destroy_node()
            raise
        self._pipeline = FramePipeline(self.cameras, self._decode, self._process,
                                       lambda camera: camera.stats.on_dropped(), self._on_pipeline_error)
        self._pipeline.start()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._loss_logs = {camera.topic: LossLog() for camera in self.cameras}
        profile = find_profile()
        self._loss_fix = fix_hint(get_rmw_implementation_identifier(), profile and str(profile), profile_variable())
        self._diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._graph_timer = self.create_timer(GRAPH_PERIOD_S, self._follow_graph)
        self._follow_graph()
        self.get_logger().info(
            f"serving {', '.join(c.topic for c in self.cameras)} with score {self.segmenter.score} "
            f"at {self.segmenter.network_size[0]}×{self.segmenter.network_size[1]} on "
            f"{self.segmenter.backend.describe()} (threshold {self.threshold:.4g})")

    # -- set-up ---------------------------------------------------------------------------------

    def _declare_parameters(self) -> Dict[str, object]:
        accept_integers_for_doubles(self, [spec.name for spec in PARAMETERS if isinstance(spec.default, float)])
        values = {}
        for spec in PARAMETERS:
            try:
                values[spec.name] = self.declare_parameter(spec.name, spec.default, spec.descriptor()).value
            except ParameterException as exc:
                raise ParameterError(f"parameter {spec.name}: {exc}") from None
        return values

    def _check_topic_names(self) -> None:
        """Refuse invalid names (rcl's rules) and clashes after remapping, before the model loads."""
        resolved = []
        for topic in self.settings.image_topics:
            try:
                name = self.resolve_topic_name(topic)
                for output in output_topics(name).values():
                    validate_full_topic_name(self.resolve_topic_name(output))
            except (RuntimeError, NameValidationException) as exc:  # rcl raises RCLError
                reason = str(exc).split(", at ")[0]
                raise ParameterError(f"image_topics: {topic!r} is not a valid topic name: {reason}") from None
            resolved.append(name)
        try:
            check_topics(resolved)
        except ValueError as exc:
            raise ParameterError(f"image_topics after remapping {resolved}: {exc}") from None

    def _warm_up(self) -> None:
        """One inference before serving: the first frame's latency is then representative, and a
        backend that cannot run fails here, at start, rather than on every frame."""
        width, height = self.segmenter.network_size
        self.segmenter.predict(np.zeros((height, width, 3), np.uint8))

    def _threshold(self, value: Optional[float]) -> float:
        return self.segmenter.anomaly_threshold if value is None else value

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Run-time changes of the dynamic parameters (rclpy has checked types, ranges, read-only)."""
        updates = {}
        for parameter in parameters:
            if parameter.name == "anomaly_threshold":
                try:
                    updates["threshold"] = self._threshold(threshold_value(parameter.value))
                except ValueError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            elif parameter.name == "overlay_alpha":
                updates["overlay_alpha"] = parameter.value
        for name, value in updates.items():  # all or nothing
            setattr(self, name, value)
        if updates:
            self.get_logger().info("now " + ", ".join(f"{k} {v:.4g}" for k, v in updates.items()))
        return SetParametersResult(successful=True)

    # -- callbacks and the graph: no decoding, no inference --------------------------------------

    def _on_image(self, camera: Camera, raw: bytes) -> None:
        camera.stats.on_received(time.monotonic(), header_stamp_ns(raw))
        if not camera.is_read():  # nobody reads its outputs: no decoding, no inference
            camera.stats.on_unread()
            return
        self._pipeline.put(camera, Frame(raw, self.get_clock().now().nanoseconds))

    def _follow_graph(self) -> None:
        now = time.monotonic()
        for camera in self.cameras:
            camera.update(now)

    # -- decoder threads (one per camera) and the worker (see .pipeline) --------------------------

    def _decode(self, camera: Camera, frame: Frame) -> Optional[Decoded]:
        max_pixels = self.settings.max_image_pixels
        try:
            msg = deserialise(frame.message, camera.msg_type)
            if camera.msg_type is CompressedImage:
                rgb = compressed_to_rgb(msg, max_pixels)
            else:
                rgb = as_rgb(image_to_rgb(msg, max_pixels))
        except ValueError as exc:
            camera.stats.on_rejected(str(exc))
            self._log_problem(camera, f"skipped a message: {exc}")
            return None
        return Decoded(msg.header, rgb, frame.received_ns)

    def _process(self, frames: List[Tuple[Camera, Decoded]]) -> None:
        start = time.perf_counter()
        try:
            predictions = self.segmenter.predict_batch([decoded.rgb for _, decoded in frames])
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: keep serving
            for camera, _ in frames:
                camera.stats.on_failed(f"{type(exc).__name__}: {exc}")
                self._log_problem(camera, f"inference failed: {type(exc).__name__}: {exc}")
            return
        inference = time.perf_counter() - start
        for (camera, decoded), prediction in zip(frames, predictions):
            if self._pipeline.stopping.is_set():
                return  # shutting down: the publishers are going away
            try:
                obstacles = self.obstacle_outputs[camera]
                prediction = obstacles.heatmap(prediction)
                publish_outputs(camera.publishers, decoded.header, decoded.rgb, prediction, self.threshold,
                                self.display_range, self.overlay_alpha)
                obstacles.publish(decoded.header, prediction, self.threshold, self.display_range)
            except Exception as exc:  # noqa: BLE001 - one camera's failure must not hide the others
                if self._pipeline.stopping.is_set() or not self.context.ok():
                    return
                camera.stats.on_failed(f"{type(exc).__name__}: {exc}")
                self._log_problem(camera, f"publishing failed: {type(exc).__name__}: {exc}")
                continue
            with camera.lock:
                camera.frame_id = decoded.header.frame_id
            camera.stats.on_published(self._latency(decoded), inference, len(frames))

    def _on_pipeline_error(self, cameras: List[Camera], exc: BaseException) -> None:
        if self._pipeline.stopping.is_set() or not self.context.ok():
            return
        for camera in cameras:
            camera.stats.on_failed(repr(exc))
            self._log_problem(camera, f"processing failed: {exc!r}")

    def _latency(self, decoded: Decoded) -> float:
        """Seconds from the header stamp (receipt where the stamp is zero) to now, on this node's clock."""
        stamp = decoded.header.stamp
        origin = stamp.sec * 1_000_000_000 + stamp.nanosec or decoded.received_ns
        return (self.get_clock().now().nanoseconds - origin) * 1e-9

    def _log_problem(self, camera: Camera, text: str) -> None:
        """At most one line per distinct problem and camera every few seconds; diagnostics count all."""
        if self._pipeline is not None and self._pipeline.stopping.is_set():
            return
        with camera.lock:
            held_back = camera.throttle.admit(text, time.monotonic())
        if held_back is not None:
            more = f" ({held_back} more since the last report)" if held_back else ""
            self.get_logger().error(f"{camera.topic}: {text}{more}")

    # -- diagnostics -----------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        model_values = [("model", self.settings.model), ("backend", self.segmenter.backend.name),
                        ("backend details", self.segmenter.backend.describe()),
                        ("score", self.segmenter.score),
                        ("network size", "{}x{}".format(*self.segmenter.network_size)),
                        ("anomaly threshold", f"{self.threshold:.6g}"),
                        ("display range", "{:.6g} {:.6g}".format(*self.display_range)),
                        ("max image pixels", str(self.settings.max_image_pixels)),
                        ("min output rate [Hz]", f"{self.health_limits.min_output_rate_hz:g}"),
                        ("output timeout [s]", f"{self.health_limits.output_timeout_s:g}")]
        model = (StatusReport(OK, f"{self.segmenter.score} anomaly score", model_values) if self._pipeline.working
                 else StatusReport(ERROR, "inference worker is not running", model_values))
        self._diagnostics.publish(diagnostics_message(
            self.get_fully_qualified_name(), self.get_clock().now().to_msg(), self.cameras, model, now))
        self._log_losses(now)

    def _log_losses(self, now: float) -> None:
        """Frames lost on the way from the camera, in the terminal: once, then every LOG_PERIOD_S."""
        for camera in self.cameras:
            line = self._loss_logs[camera.topic].line(camera.topic, *camera.stats.loss_totals(), self._loss_fix, now)
            if line:
                self.get_logger().warning(line)

    # -- shutdown --------------------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stop the threads, waiting at most SHUTDOWN_WAIT_S for a batch in flight (it then
        finishes without publishing or logging), release the model and GPU memory."""
        if self._pipeline is not None:  # a batch still in flight checks `stopping` before ROS
            self.stopped_cleanly = self._pipeline.stop(SHUTDOWN_WAIT_S)
        self._log_bridge.close()
        self.segmenter = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        super().destroy_node()


def main(args=None) -> int:
    """``anomaly_node [--ros-args ...]``: serve until Ctrl-C or SIGTERM; 2 on bad parameters."""
    if wants_help(sys.argv[1:] if args is None else args):
        print(usage())  # and nothing started: no model, no DDS participant
        return 0
    # Fast DDS reads its profile when the process's first participant is created (rclpy.init)
    dds_profile = profile_environment()
    os.environ.update(dds_profile)
    ignore_interrupts_while_serving()  # rclpy's handler (installed by init) stops the node
    rclpy.init(args=args)
    node, executor, code = None, None, 0
    try:
        executor = StoppableExecutor()
        node = AnomalyNode()
        for name, path in dds_profile.items():
            if name != QOS_FROM_XML:
                node.get_logger().info(f"Fast DDS profile {path} ({name}): large frames reach other processes")
        if not node.settings.deployment.build_only:
            rclpy.spin(node, executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as exc:
        get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        code = 2
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C or SIGTERM while the model was loading: rclpy's handler shut the context down,
        # so creating the topics failed. That is a requested stop, not an error.
    finally:
        ignore_interrupts_from_now_on()  # a second Ctrl-C must not kill a node that is stopping
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if node is not None and not node.stopped_cleanly:
        # A batch is still inside the inference library in a daemon thread: the interpreter's teardown
        # would pull the library's threads from under it (C++ terminate, SIGABRT). ROS is shut down and
        # nothing else is pending: end the process here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
