"""The node's parameters: one data-driven :class:`ParameterSpec` per entry of :data:`PARAMETERS`,
turned into an rclpy descriptor with its type, range and whether it may change while the node runs,
and :class:`Settings`, the values checked together.

ROS-free (``rcl_interfaces`` is imported only to build descriptors), so that whoever starts the
node — the live evaluation, benchmarks — names its parameters from this one table
(:func:`ros_arguments`).
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from ..backends.common import BACKENDS, PRECISIONS
from ..backends.deployment import DeploymentSpec
from ..image_codec import DEFAULT_MAX_PIXELS
from ..resources import model_path
from ..scoring import SCORES
from ..topics import check_topics

__all__ = ["ParameterSpec", "PARAMETERS", "MAX_PIXELS_LIMIT", "ros_arguments", "ParameterError", "Settings",
           "threshold_value", "AUTO", "QOS_RELIABILITY"]

#: the input reliability that matches the publishers (resolved per topic by ros.camera)
AUTO = "best_available"
#: qos_reliability parameter value → what the camera subscriptions take
QOS_RELIABILITY = {"auto": AUTO, "best_effort": "best_effort", "reliable": "reliable"}

#: the largest max_image_pixels accepted: 8192² (such a frame costs tens of seconds on a CPU)
MAX_PIXELS_LIMIT = 8192 * 8192


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    constraints: str = ""
    integer_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None
    dynamic: bool = False  # may be set while the node runs; the others are read once, at start

    def descriptor(self):
        """The rclpy ``ParameterDescriptor``."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        descriptor = ParameterDescriptor(name=self.name, description=self.description,
                                         additional_constraints=self.constraints, read_only=not self.dynamic)
        if self.integer_range:
            descriptor.integer_range = [IntegerRange(from_value=self.integer_range[0],
                                                     to_value=self.integer_range[1], step=1)]
        if self.float_range:
            descriptor.floating_point_range = [FloatingPointRange(from_value=self.float_range[0],
                                                                  to_value=self.float_range[1], step=0.0)]
        return descriptor

    def command_line_value(self, value) -> str:
        """``value`` as ``--ros-args -p name:=VALUE`` reads it for this parameter's type."""
        if isinstance(self.default, list):
            return "[" + ", ".join(f"'{item}'" for item in value) + "]"
        if isinstance(self.default, bool):
            return "true" if value else "false"
        if isinstance(self.default, float):
            return str(float(value))
        if isinstance(self.default, int):
            return str(int(value))
        return str(value)


PARAMETERS = (
    ParameterSpec("image_topics", ["image"],
                  "input image topics; one ending in /compressed is a sensor_msgs/CompressedImage topic. "
                  "Outputs go next to each input (after remapping): <prefix>/<name> gives <prefix>/semantic, ...",
                  "non-empty; distinct prefixes"),
    ParameterSpec("model", "default",
                  "model file (.safetensors, or segmenter .pth), or 'default' for the embedded model"),
    ParameterSpec("backend", "auto", "inference backend", "one of " + ", ".join(BACKENDS)),
    ParameterSpec("device", "auto", "cpu, cuda or cuda:N; auto: the fastest the backend can use"),
    ParameterSpec("network_width", 0, "network input width in pixels; 0: the model's own",
                  "0, or a multiple of the model's size divisor (32 for ESPNetv2)", (0, 16384)),
    ParameterSpec("network_height", 0, "network input height in pixels; 0: the model's own",
                  "0, or a multiple of the model's size divisor (32 for ESPNetv2)", (0, 16384)),
    ParameterSpec("score", "", "anomaly score; empty: the model's own (rpl_energy with RPL weights)",
                  "empty or one of " + ", ".join(SCORES)),
    ParameterSpec("smoothing_sigma", -1.0,
                  "Gaussian smoothing of the score map (network pixels); 0: off; negative: the model's own",
                  "", None, (-1.0, 50.0)),
    ParameterSpec("anomaly_threshold", math.nan,
                  "score above which a pixel is anomalous (anomaly_mask, overlay contour); "
                  ".nan: the model's own. Can be set while running", "finite, or .nan", dynamic=True),
    ParameterSpec("overlay_alpha", 0.5, "heatmap opacity in the overlay image. Can be set while running",
                  "", None, (0.0, 1.0), dynamic=True),
    ParameterSpec("max_image_pixels", DEFAULT_MAX_PIXELS,
                  "largest frame accepted, in pixels (width × height); a compressed frame's size is read "
                  "from its header, before decoding", "", (1, MAX_PIXELS_LIMIT)),
    ParameterSpec("qos_reliability", "auto",
                  "input QoS reliability: auto (match the publishers: reliable if all of them are, else "
                  "best effort), best_effort or reliable. Per topic: qos_overrides.<topic>.subscription."
                  "reliability", "auto, best_effort or reliable"),
    ParameterSpec("qos_depth", 5, "input QoS history depth (keep last)", "", (1, 1000)),
    ParameterSpec("min_output_rate_hz", -1.0,
                  "a camera's diagnostics are OK while its outputs come at least this often (over 5 s), WARN "
                  "below; 0: no requirement; negative: 0.5 Hz where inference runs on a CPU, 10 Hz on a GPU",
                  "", None, (-1.0, 1000.0)),
    ParameterSpec("output_timeout_s", 5.0,
                  "a camera's diagnostics are ERROR once it had no output for this long while someone "
                  "subscribes to its outputs", "", None, (0.1, 3600.0)),
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
    # obstacles for planners and costmaps (ros.object_outputs; each output only while subscribed)
    ParameterSpec("obstacle_corridor_classes", ["road", "sidewalk"],
                  "closed-set classes of the drivable corridor (holes that objects make in it are filled)",
                  "Cityscapes class names, e.g. road, sidewalk, terrain"),
    ParameterSpec("obstacle_corridor_objects", True, "obstacles only inside the drivable corridor"),
    ParameterSpec("heatmap_in_corridor", False, "restrict the image outputs (anomaly, anomaly_mask, "
                  "anomaly_confidence, overlay) to the corridor: outside gets the frame's minimum score"),
    ParameterSpec("obstacle_min_area_px", 200, "smallest obstacle in camera pixels", "", (1, 1 << 24)),
    ParameterSpec("obstacle_min_area_m2", 0.0, "smallest ground footprint of a projected obstacle (m²)",
                  "", None, (0.0, 1000.0)),
    ParameterSpec("obstacle_merge_gap_px", 6, "anomalous regions closer than this (camera pixels) are one obstacle",
                  "", (0, 1000)),
    ParameterSpec("obstacle_confirm_frames", 2, "an obstacle is published once seen in this many of the last "
                  "obstacle_window_frames frames (1: at once)", "", (1, 100)),
    ParameterSpec("obstacle_window_frames", 3, "frames of the persistence window", "", (1, 100)),
    ParameterSpec("obstacle_match_iou", 0.3, "box overlap (IoU) that matches an obstacle to the previous frames'",
                  "", None, (0.01, 1.0)),
    ParameterSpec("camera_height_m", 0.0, "camera height over the ground (m) for the ground projection; "
                  "0: no projection (no distances, markers, points)", "", None, (0.0, 100.0)),
    ParameterSpec("camera_pitch_deg", 0.0, "camera pitch below the horizontal (degrees, positive: down)",
                  "", None, (-89.0, 89.0)),
    ParameterSpec("camera_roll_deg", 0.0, "camera roll about its optical axis (degrees, positive: right side "
                  "lower)", "", None, (-89.0, 89.0)),
    ParameterSpec("ground_frame", "", "frame whose x-y plane is the ground, z up (e.g. base_footprint): the camera's "
                  "height / pitch / roll come from TF (tf2_ros) at each image's stamp, and camera_height_m / "
                  "camera_pitch_deg / camera_roll_deg are ignored; empty: those parameters", "a TF frame name or empty"),
    ParameterSpec("obstacle_max_range_m", 40.0, "ground points farther than this are dropped (m)",
                  "", None, (0.1, 1000.0)),
    ParameterSpec("obstacle_cloud", "contact", "pixels of each obstacle in obstacle_points: contact (the lowest "
                  "of each column: where it stands) or all (right for flat objects only)", "contact or all"),
)

_BY_NAME = {spec.name: spec for spec in PARAMETERS}


def ros_arguments(values: Mapping[str, object]) -> List[str]:
    """``--ros-args -p name:=value …`` that start the node with these parameter values, each checked
    against :data:`PARAMETERS` and written as its type."""
    arguments = ["--ros-args"]
    for name, value in values.items():
        if name not in _BY_NAME:
            raise ValueError(f"anomaly_node has no parameter {name!r}; its parameters: {', '.join(_BY_NAME)}")
        arguments += ["-p", f"{name}:={_BY_NAME[name].command_line_value(value)}"]
    return arguments


class ParameterError(ValueError):
    """A parameter value the node cannot start with."""


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
    max_image_pixels: int
    qos_reliability: str  # a key of camera.RELIABILITIES
    qos_depth: int
    deployment: DeploymentSpec
    min_output_rate_hz: float = -1.0  # negative: the device's default (.health)
    output_timeout_s: float = 5.0

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
        if reliability not in QOS_RELIABILITY:
            raise ParameterError(f"qos_reliability {reliability!r} is unknown; "
                                 f"choose {', '.join(QOS_RELIABILITY)}")
        path = model_path(values["model"])
        if not path.is_file():
            raise ParameterError(f"model file {str(path)!r} does not exist; give a model file or 'default'")
        try:
            threshold = threshold_value(values["anomaly_threshold"])
            deployment = DeploymentSpec.from_settings(values, cameras=len(topics))
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        return cls(
            image_topics=topics, model=values["model"], backend=backend, device=device,
            network_size=(width, height) if width else None, score=score,
            smoothing_sigma=None if values["smoothing_sigma"] < 0 else values["smoothing_sigma"],
            anomaly_threshold=threshold, overlay_alpha=values["overlay_alpha"],
            max_image_pixels=values["max_image_pixels"],
            qos_reliability=QOS_RELIABILITY[reliability], qos_depth=values["qos_depth"], deployment=deployment,
            min_output_rate_hz=values["min_output_rate_hz"], output_timeout_s=values["output_timeout_s"])


def threshold_value(value: float) -> Optional[float]:
    """anomaly_threshold: a finite score, or NaN for the model's own (None)."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise ValueError(f"anomaly_threshold {value} is not finite; give a score, or .nan for the model's own")
    return value
