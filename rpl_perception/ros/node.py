"""``anomaly_node``: the ROS 2 node ``rpl_anomaly``, a thin layer around :class:`AnomalySegmenter`.

For each input topic ``<prefix>/<name>`` (``sensor_msgs/Image``, or ``CompressedImage`` where the
name ends in ``/compressed``) it publishes, with the input's header unchanged:

* ``<prefix>/semantic``        mono8, Cityscapes train ids
* ``<prefix>/anomaly``         32FC1, the raw anomaly score at the input's size
* ``<prefix>/anomaly_mask``    mono8, 255 where the score is above ``anomaly_threshold``
* ``<prefix>/semantic_color``  rgb8, only while someone subscribes
* ``<prefix>/overlay``         rgb8 camera image + heatmap + anomaly contour, only while subscribed

Callbacks only keep the newest frame of each camera (see :mod:`.frame_buffer`); one worker thread
runs every waiting frame, from all cameras, as one batch through one model and publishes. Per-camera
diagnostics go to ``/diagnostics`` once a second. Parameters: see ``PARAMETERS`` and
``config/anomaly.yaml``.
"""

import gc
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import CompressedImage, Image

from ..backends import BACKENDS, PRECISIONS, BackendUnavailable, DeploymentSpec
from ..commands import model_path
from ..image import MAX_IMAGE_SIDE, as_rgb
from ..scoring import SCORES
from ..segmenter import AnomalySegmenter
from ..visualize import colorize_labels, overlay
from .codec import compressed_to_rgb, fill_image, image_to_rgb
from .frame_buffer import LatestFrameBuffer
from .log_bridge import forward_python_logging
from .stats import ERROR, OK, CameraStats, StatusReport
from .topics import check_topics, is_compressed, output_topics

__all__ = ["NODE_NAME", "PARAMETERS", "ParameterError", "Settings", "AnomalyNode", "main"]

NODE_NAME = "rpl_anomaly"
RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
DIAGNOSTICS_PERIOD_S = 1.0
LOG_THROTTLE_S = 5.0
WORKER_JOIN_TIMEOUT_S = 10.0
#: outputs are reliable so that bags and RViz (reliable by default) both receive them
OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


class ParameterError(ValueError):
    """A parameter value the node cannot start with."""


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    constraints: str = ""
    integer_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None

    def descriptor(self) -> ParameterDescriptor:
        # read-only: every parameter is used once, at start
        descriptor = ParameterDescriptor(name=self.name, description=self.description,
                                         additional_constraints=self.constraints, read_only=True)
        if self.integer_range:
            descriptor.integer_range = [IntegerRange(from_value=self.integer_range[0],
                                                     to_value=self.integer_range[1], step=1)]
        if self.float_range:
            descriptor.floating_point_range = [FloatingPointRange(from_value=self.float_range[0],
                                                                  to_value=self.float_range[1], step=0.0)]
        return descriptor


PARAMETERS = (
    ParameterSpec("image_topics", ["image"],
                  "input image topics; one ending in /compressed is a sensor_msgs/CompressedImage topic. "
                  "Outputs go next to each input: <prefix>/<name> gives <prefix>/semantic, ...",
                  "non-empty; distinct prefixes"),
    ParameterSpec("model", "default",
                  "model file (.safetensors, or segmenter .pth), or 'default' for the embedded model"),
    ParameterSpec("backend", "auto", "inference backend", "one of " + ", ".join(BACKENDS)),
    ParameterSpec("device", "auto", "cpu, cuda or cuda:N; auto: the fastest the backend can use"),
    ParameterSpec("network_width", 0, "network input width in pixels; 0: the model's own",
                  "0, or a multiple of the model's size divisor (32 for ESPNetv2)", (0, MAX_IMAGE_SIDE)),
    ParameterSpec("network_height", 0, "network input height in pixels; 0: the model's own",
                  "0, or a multiple of the model's size divisor (32 for ESPNetv2)", (0, MAX_IMAGE_SIDE)),
    ParameterSpec("score", "", "anomaly score; empty: the model's own (rpl_energy with RPL weights)",
                  "empty or one of " + ", ".join(SCORES)),
    ParameterSpec("smoothing_sigma", -1.0,
                  "Gaussian smoothing of the score map (network pixels); 0: off; negative: the model's own",
                  "", None, (-1.0, 50.0)),
    ParameterSpec("anomaly_threshold", math.nan,
                  "score above which a pixel is anomalous (anomaly_mask, overlay contour); "
                  ".nan: the model's own"),
    ParameterSpec("overlay_alpha", 0.5, "heatmap opacity in the overlay image", "", None, (0.0, 1.0)),
    ParameterSpec("qos_reliability", "best_effort",
                  "input QoS reliability (best_effort: REP-2003 for sensor data)", "best_effort or reliable"),
    ParameterSpec("qos_depth", 5, "input QoS history depth (keep last)", "", (1, 1000)),
    # deployment (DeploymentSpec.from_settings reads these; `rpl-perception build-engine` takes the same)
    ParameterSpec("precision", "fp32", "network precision; scores are float32 in every case",
                  "one of " + ", ".join(PRECISIONS) + " (fp16: TensorRT, PyTorch on CUDA; int8: TensorRT)"),
    ParameterSpec("max_batch", 0, "most frames per network batch (dynamic 1..max_batch); 0: one per camera",
                  "", (0, 64)),
    ParameterSpec("cache_dir", "", "folder of exported ONNX files and TensorRT engines; "
                  "empty: ~/.cache/rpl_perception. May be read-only when the engine is pre-built"),
    ParameterSpec("engine_path", "", "TensorRT engine file to load (or build there); empty: in cache_dir"),
    ParameterSpec("calibration_images", "", "folder of images for an int8 TensorRT build; "
                  "empty: int8 only loads an engine built before"),
    ParameterSpec("build_only", False, "export the graph and build the TensorRT engine, then exit 0"),
)


@dataclass(frozen=True)
class Settings:
    """The validated parameters (None: the model's own value)."""
    image_topics: Tuple[str, ...]
    model: str
    backend: str
    device: str
    network_size: Optional[Tuple[int, int]]
    score: Optional[str]
    smoothing_sigma: Optional[float]
    anomaly_threshold: Optional[float]
    overlay_alpha: float
    qos: QoSProfile
    deployment: DeploymentSpec

    @classmethod
    def from_values(cls, values: Dict[str, object]) -> "Settings":
        """Check the parameters together; raise :class:`ParameterError` with what to change."""
        try:
            topics = tuple(check_topics(values["image_topics"]))
        except ValueError as exc:
            raise ParameterError(f"image_topics: {exc}") from None
        backend = values["backend"]
        if backend not in BACKENDS:
            raise ParameterError(f"backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
        width, height = values["network_width"], values["network_height"]
        if (width == 0) != (height == 0):
            raise ParameterError(f"network_width and network_height must both be set or both be 0 "
                                 f"(the model's size); got {width}×{height}")
        device = values["device"]
        if not (device in ("auto", "cpu") or device.startswith("cuda")):
            raise ParameterError(f"device {device!r} is unknown; choose auto, cpu, cuda or cuda:N")
        score = values["score"] or None
        if score is not None and score not in SCORES:
            raise ParameterError(f"score {score!r} is unknown; choose one of {', '.join(SCORES)} or '' "
                                 "for the model's own")
        reliability = values["qos_reliability"]
        if reliability not in RELIABILITY:
            raise ParameterError(f"qos_reliability {reliability!r} is unknown; "
                                 "choose best_effort or reliable")
        path = model_path(values["model"])
        if not path.is_file():
            raise ParameterError(f"model file {str(path)!r} does not exist; give a model file or 'default'")
        threshold = values["anomaly_threshold"]
        try:
            deployment = DeploymentSpec.from_settings(values, cameras=len(topics))
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        return cls(
            image_topics=topics, model=values["model"], backend=backend, device=device,
            network_size=(width, height) if width else None, score=score,
            smoothing_sigma=None if values["smoothing_sigma"] < 0 else values["smoothing_sigma"],
            anomaly_threshold=None if math.isnan(threshold) else threshold,
            overlay_alpha=values["overlay_alpha"],
            qos=QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=values["qos_depth"],
                           reliability=RELIABILITY[reliability]),
            deployment=deployment,
        )


def load_segmenter(settings: Settings) -> AnomalySegmenter:
    """The segmenter with the backend of the deployment parameters (dynamic batch 1..max_batch)."""
    try:
        segmenter = AnomalySegmenter.from_spec(settings.deployment)
        segmenter.backend  # noqa: B018 - created now: export / engine load or build, at start
    except (ValueError, BackendUnavailable, OSError) as exc:  # e.g. a bad size, no GPU, no engine
        raise ParameterError(str(exc)) from None
    return segmenter


def anomaly_mask(anomaly: np.ndarray, threshold: float) -> np.ndarray:
    """0/255 mono8 mask, with the rule of the overlay's contour: score > threshold."""
    return (anomaly > threshold).astype(np.uint8) * np.uint8(255)


class Frame(NamedTuple):
    message: object
    received_ns: int  # node clock at receipt, the latency origin when the stamp is zero


@dataclass
class Camera:
    """One input topic: its decoder, output publishers, statistics and log throttle."""
    topic: str
    decode: object
    publishers: Dict[str, object]
    stats: CameraStats
    frame_id: str = ""
    last_log: float = -math.inf
    unlogged: int = 0
    subscription: object = field(default=None, repr=False)


class AnomalyNode(Node):
    """Semantic mask and anomaly heatmap for every camera in ``image_topics``, one shared model.

    Construct with rclpy ``Node`` keyword arguments (``parameter_overrides``, ``context``,
    ``namespace``, ...); raises :class:`ParameterError` on parameters it cannot start with.
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._buffer = LatestFrameBuffer()
        self._worker: Optional[threading.Thread] = None
        self.segmenter: Optional[AnomalySegmenter] = None
        self._log_bridge = forward_python_logging(self.get_logger())  # export/engine progress, fallbacks
        try:
            self.settings = Settings.from_values(self._declare_parameters())
            self._check_topic_names()
            self.get_logger().info(f"preparing {self.settings.deployment.describe()}")
            self.segmenter = load_segmenter(self.settings)
            if self.settings.deployment.build_only:
                self.get_logger().info(f"build_only: ready ({self.segmenter.backend.describe()}); exiting")
                return
            self.threshold = (self.segmenter.anomaly_threshold if self.settings.anomaly_threshold is None
                              else self.settings.anomaly_threshold)
            self.display_range = self.segmenter.display_range
            self._warm_up()
            self.cameras = [self._add_camera(topic) for topic in self.settings.image_topics]
        except BaseException:
            self.destroy_node()
            raise
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="rpl_anomaly_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"serving {', '.join(c.topic for c in self.cameras)} with score {self.segmenter.score} "
            f"at {self.segmenter.network_size[0]}×{self.segmenter.network_size[1]} on "
            f"{self.segmenter.backend.describe()} (threshold {self.threshold:.4g})")

    # -- set-up ---------------------------------------------------------------------------------

    def _declare_parameters(self) -> Dict[str, object]:
        values = {}
        for spec in PARAMETERS:
            try:
                values[spec.name] = self.declare_parameter(spec.name, spec.default, spec.descriptor()).value
            except ParameterException as exc:
                raise ParameterError(f"parameter {spec.name}: {exc}") from None
        return values

    def _check_topic_names(self) -> None:
        """Refuse invalid names (rcl's rules, after remapping) before the model loads."""
        for topic in self.settings.image_topics:
            for name in (topic, *output_topics(topic).values()):
                try:
                    validate_full_topic_name(self.resolve_topic_name(name))
                except (RuntimeError, NameValidationException) as exc:  # rcl raises RCLError
                    reason = str(exc).split(", at ")[0]
                    raise ParameterError(
                        f"image_topics: {name!r} is not a valid topic name: {reason}") from None

    def _warm_up(self) -> None:
        """One inference before serving: the first frame's latency is then representative, and a
        backend that cannot run fails here, at start, rather than on every frame."""
        width, height = self.segmenter.network_size
        self.segmenter.predict(np.zeros((height, width, 3), np.uint8))

    def _add_camera(self, topic: str) -> Camera:
        compressed = is_compressed(topic)
        camera = Camera(topic=topic, decode=compressed_to_rgb if compressed else image_to_rgb,
                        publishers={name: self.create_publisher(Image, out, OUTPUT_QOS)
                                    for name, out in output_topics(topic).items()},
                        stats=CameraStats(time.monotonic()))
        camera.subscription = self.create_subscription(CompressedImage if compressed else Image, topic,
                                                       partial(self._on_image, camera), self.settings.qos)
        camera.topic = camera.subscription.topic_name  # fully resolved, for logs and diagnostics
        return camera

    # -- callbacks: no inference here ------------------------------------------------------------

    def _on_image(self, camera: Camera, message) -> None:
        camera.stats.on_received(time.monotonic())
        if self._buffer.put(camera.topic, Frame(message, self.get_clock().now().nanoseconds)):
            camera.stats.on_dropped()

    # -- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        cameras = {camera.topic: camera for camera in self.cameras}
        while (frames := self._buffer.take(timeout=1.0)) is not None:
            if not frames:
                continue
            try:
                self._process([(cameras[topic], frame) for topic, frame in frames.items()])
            except Exception as exc:  # noqa: BLE001 - a bug on one batch must not stop the node
                if not self.context.ok():
                    return  # shutting down: the publishers are already gone
                for topic in frames:
                    cameras[topic].stats.on_failed(repr(exc))
                    self._log_problem(cameras[topic], f"processing failed: {exc!r}")

    def _process(self, frames) -> None:
        batch = []
        for camera, frame in frames:
            try:
                batch.append((camera, frame, as_rgb(camera.decode(frame.message))))
            except ValueError as exc:
                camera.stats.on_rejected(str(exc))
                self._log_problem(camera, f"skipped a message: {exc}")
        if not batch:
            return
        start = time.perf_counter()
        try:
            predictions = self.segmenter.predict_batch([rgb for _, _, rgb in batch])
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: keep serving
            for camera, _, _ in batch:
                camera.stats.on_failed(f"{type(exc).__name__}: {exc}")
                self._log_problem(camera, f"inference failed: {type(exc).__name__}: {exc}")
            return
        inference = time.perf_counter() - start
        for (camera, frame, rgb), prediction in zip(batch, predictions):
            try:
                self._publish(camera, frame.message.header, rgb, prediction)
            except Exception as exc:  # noqa: BLE001 - one camera's failure must not hide the others
                if not self.context.ok():
                    return
                camera.stats.on_failed(f"{type(exc).__name__}: {exc}")
                self._log_problem(camera, f"publishing failed: {type(exc).__name__}: {exc}")
                continue
            camera.frame_id = frame.message.header.frame_id
            camera.stats.on_published(self._latency(frame), inference, len(batch))

    def _publish(self, camera: Camera, header, rgb: np.ndarray, prediction) -> None:
        publishers = camera.publishers

        def send(name, pixels, encoding):
            publishers[name].publish(fill_image(Image(header=header), pixels, encoding))

        send("anomaly", prediction.anomaly, "32FC1")
        send("anomaly_mask", anomaly_mask(prediction.anomaly, self.threshold), "mono8")
        send("semantic", prediction.labels, "mono8")
        # the colour images cost time and bandwidth: only for a viewer that is listening
        if publishers["semantic_color"].get_subscription_count():
            send("semantic_color", colorize_labels(prediction.labels), "rgb8")
        if publishers["overlay"].get_subscription_count():
            low, high = self.display_range
            send("overlay", overlay(rgb, prediction.anomaly, low, high, self.threshold,
                                    alpha=self.settings.overlay_alpha), "rgb8")

    def _latency(self, frame: Frame) -> float:
        """Seconds from the header stamp (receipt where the stamp is zero) to now."""
        stamp = frame.message.header.stamp
        origin = stamp.sec * 1_000_000_000 + stamp.nanosec or frame.received_ns
        return (self.get_clock().now().nanoseconds - origin) * 1e-9

    def _log_problem(self, camera: Camera, text: str) -> None:
        """At most one error per camera every LOG_THROTTLE_S; diagnostics count all of them."""
        now = time.monotonic()
        if now - camera.last_log < LOG_THROTTLE_S:
            camera.unlogged += 1
            return
        more = f" ({camera.unlogged} more since the last report)" if camera.unlogged else ""
        self.get_logger().error(f"{camera.topic}: {text}{more}")
        camera.last_log, camera.unlogged = now, 0

    # -- diagnostics -----------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        diagnostics = DiagnosticArray()
        diagnostics.header.stamp = self.get_clock().now().to_msg()
        for camera in self.cameras:
            diagnostics.status.append(self._status(f"{self.get_name()}: {camera.topic}", camera.frame_id,
                                                   camera.stats.report(now)))
        diagnostics.status.append(self._status(f"{self.get_name()}: model", "", self._model_report()))
        self._diagnostics.publish(diagnostics)

    def _model_report(self) -> StatusReport:
        segmenter = self.segmenter
        values = [("model", self.settings.model), ("backend", segmenter.backend.name),
                  ("backend details", segmenter.backend.describe()),
                  ("score", segmenter.score),
                  ("network size", "{}x{}".format(*segmenter.network_size)),
                  ("anomaly threshold", f"{self.threshold:.6g}"),
                  ("display range", "{:.6g} {:.6g}".format(*self.display_range))]
        if self._worker is None or not self._worker.is_alive():
            return StatusReport(ERROR, "inference worker is not running", values)
        return StatusReport(OK, f"{segmenter.score} anomaly score", values)

    @staticmethod
    def _status(name: str, hardware_id: str, report: StatusReport) -> DiagnosticStatus:
        return DiagnosticStatus(level=bytes([report.level]), name=name, message=report.message,
                                hardware_id=hardware_id,
                                values=[KeyValue(key=k, value=v) for k, v in report.values])

    # -- shutdown --------------------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stop the worker (after its current batch), release the model and GPU memory."""
        self._buffer.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            if self._worker.is_alive():  # stuck in a batch (e.g. a hung GPU): do not hang shutdown
                self.get_logger().warning(f"inference worker still busy after {WORKER_JOIN_TIMEOUT_S:.0f} s; "
                                          "shutting down without it")
        self._log_bridge.close()
        self.segmenter = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        super().destroy_node()


def main(args=None) -> int:
    """``anomaly_node [--ros-args ...]``: serve until Ctrl-C or SIGTERM; 2 on bad parameters."""
    rclpy.init(args=args)
    node = None
    try:
        node = AnomalyNode()
        if not node.settings.deployment.build_only:
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as exc:
        get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        return 2
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C or SIGTERM while the model was loading: rclpy's handler shut the context down,
        # so creating the topics failed. That is a requested stop, not an error.
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
