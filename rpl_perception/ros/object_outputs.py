"""The obstacle outputs of one camera, for planners and costmaps (each only while subscribed):

* ``<prefix>/anomaly_confidence``  mono8, 0–255 from the calibrated score (threshold → 128)
* ``<prefix>/obstacle_mask``       mono8, 255 on the pixels of the published objects
* ``<prefix>/obstacles``           ``vision_msgs/Detection2DArray`` (where vision_msgs is installed)
* ``<prefix>/obstacle_markers``    ``visualization_msgs/MarkerArray``, boxes on the ground
* ``<prefix>/obstacle_points``     ``sensor_msgs/PointCloud2``, the objects' ground points

Objects (:func:`rpl_perception.obstacles.find_obstacles`) are computed only when one of the last
four has a subscriber, then kept steady by an :class:`~rpl_perception.persistence.ObjectTracker`.
Ground outputs need ``<prefix>/camera_info`` (``sensor_msgs/CameraInfo``) and the camera's pose over the
ground: ``camera_height_m`` > 0 (with pitch and roll), or TF with ``ground_frame`` (:mod:`.camera_pose`).
"""

import math
import threading
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from ..corridor import CorridorSettings, class_ids, drivable_corridor, restrict_to_corridor
from ..ground_projection import CameraIntrinsics, CameraPose, GroundProjector
from ..image_codec import fill_image
from ..labels import CITYSCAPES_CLASSES
from ..obstacles import ObstacleSettings, confidence_image, find_obstacles, work_size
from ..persistence import ObjectTracker
from ..topics import CAMERA_INFO, sibling_topic
from .camera_pose import TfCameraPose
from .obstacle_messages import detection_array, ground_cloud, import_vision_msgs, marker_array
from .parameters import ParameterError

__all__ = ["ObstacleConfig", "ObstacleOutputs", "CLOUD_PIXELS"]

#: obstacle_cloud: which pixels of an object go into the cloud
CLOUD_PIXELS = ("contact", "all")
OBJECT_OUTPUTS = ("obstacle_mask", "obstacles", "obstacle_markers", "obstacle_points")


@dataclass(frozen=True)
class ObstacleConfig:
    """The obstacle parameters, checked together (see ``config/anomaly.yaml``)."""
    settings: ObstacleSettings
    heatmap_in_corridor: bool
    confirm_frames: int
    window_frames: int
    match_iou: float
    pose: Optional[CameraPose]  # None: camera_height_m 0, nothing projected (unless ground_frame)
    ground_frame: str  # non-empty: the pose from TF, per frame
    max_range_m: float
    cloud: str

    @classmethod
    def from_values(cls, values: Dict[str, object]) -> "ObstacleConfig":
        try:
            corridor = CorridorSettings(classes=tuple(values["obstacle_corridor_classes"]))
            settings = ObstacleSettings(corridor, values["obstacle_corridor_objects"], values["obstacle_min_area_px"],
                                        values["obstacle_min_area_m2"], values["obstacle_merge_gap_px"])
            height = values["camera_height_m"]
            pose = None if height == 0 else CameraPose(height, math.radians(values["camera_pitch_deg"]),
                                                        math.radians(values["camera_roll_deg"]))
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        k, n = values["obstacle_confirm_frames"], values["obstacle_window_frames"]
        if not 1 <= k <= n:
            raise ParameterError(f"obstacle_confirm_frames ({k}) must be between 1 and obstacle_window_frames ({n})")
        if values["obstacle_cloud"] not in CLOUD_PIXELS:
            raise ParameterError(f"obstacle_cloud {values['obstacle_cloud']!r} is unknown; choose "
                                 f"{' or '.join(CLOUD_PIXELS)}")
        return cls(settings, values["heatmap_in_corridor"], k, n, values["obstacle_match_iou"], pose,
                   values["ground_frame"].strip(), values["obstacle_max_range_m"], values["obstacle_cloud"])


class ObstacleOutputs:
    """Publishers, the CameraInfo subscription and the tracker of one camera (``topic``: its input)."""

    def __init__(self, node, topic: str, config: ObstacleConfig, qos: QoSProfile, classes=None,
                 tf_pose: Optional[TfCameraPose] = None):
        self.config, self.classes, self.tf_pose = config, classes, tf_pose
        if classes is not None:  # the model's own class names: refuse a corridor class it lacks now
            class_ids(config.settings.corridor.classes, classes)
        self.tracker = ObjectTracker(config.confirm_frames, config.window_frames, config.match_iou)
        self._lock = threading.Lock()  # intrinsics come from the executor, frames from the worker
        self._intrinsics: Optional[CameraIntrinsics] = None
        self._projector: Optional[Tuple[CameraIntrinsics, Tuple[int, int], GroundProjector]] = None
        self._no_pose_reason = "camera_height_m is 0"
        self._logger = node.get_logger()
        self.vision_msgs = import_vision_msgs()
        types = {"anomaly_confidence": Image, "obstacle_mask": Image, "obstacle_markers": MarkerArray,
                 "obstacle_points": PointCloud2}
        if self.vision_msgs is not None:
            types["obstacles"] = self.vision_msgs.Detection2DArray
        self.publishers = {name: node.create_publisher(kind, sibling_topic(topic, name), qos)
                           for name, kind in types.items()}
        self.camera_info_topic = sibling_topic(topic, CAMERA_INFO)
        self.subscription = node.create_subscription(CameraInfo, self.camera_info_topic, self._on_camera_info,
                                                     qos_profile_sensor_data)

    def _on_camera_info(self, msg) -> None:
        try:
            intrinsics = CameraIntrinsics.from_camera_info(msg)
        except ValueError as exc:
            self._logger.warning(f"{self.camera_info_topic}: {exc}", throttle_duration_sec=10.0)
            return
        with self._lock:
            old = self._intrinsics
            if old is None or (old.width, old.height, old.model) != (intrinsics.width, intrinsics.height,
                                                                     intrinsics.model) \
                    or not (np.array_equal(old.k, intrinsics.k) and np.array_equal(old.d, intrinsics.d)):
                self._intrinsics = intrinsics

    def pose(self, header=None) -> Optional[CameraPose]:
        """The camera's pose for the frame of ``header``: from TF with ``ground_frame``, else the parameters."""
        if self.tf_pose is None:
            return self.config.pose
        if header is None:
            self._no_pose_reason = "no image header to look the pose up in TF with"
            return None
        pose, self._no_pose_reason = self.tf_pose.pose(header)
        return pose

    def projector(self, width: int, height: int, header=None, warn: bool = False) -> Optional[GroundProjector]:
        """The projector at the work size of a width × height frame; None without pose or CameraInfo."""
        pose = self.pose(header)
        if pose is None:
            return self._unprojected(self._no_pose_reason, warn)
        with self._lock:
            intrinsics = self._intrinsics
        if intrinsics is None:
            return self._unprojected(f"no valid sensor_msgs/CameraInfo on {self.camera_info_topic} yet", warn)
        cached, size = self._projector, (width, height)
        # its per-pixel table is built once per camera, size and (nearly) the same pose
        if cached is None or cached[0] is not intrinsics or cached[1] != size or not _same_pose(cached[2].pose, pose):
            camera = intrinsics.scaled(width, height)  # CameraInfo may describe another binning
            work = work_size(width, height, self.config.settings.work_width)
            cached = (intrinsics, size, GroundProjector(camera, pose, self.config.max_range_m).at_size(*work))
            self._projector = cached
        return cached[2]

    def _unprojected(self, reason: str, warn: bool) -> None:
        if warn:
            self._logger.warning(f"{reason}: obstacle_markers and obstacle_points are not published (no ground projection)",
                                 throttle_duration_sec=10.0)

    def _wanted(self):
        return {name for name, publisher in self.publishers.items() if publisher.get_subscription_count()}

    def heatmap(self, prediction):
        """The prediction the image outputs show: restricted to the corridor with heatmap_in_corridor."""
        if not self.config.heatmap_in_corridor:
            return prediction
        corridor = drivable_corridor(prediction.labels, self.config.settings.corridor, self._class_names())
        return replace(prediction, anomaly=restrict_to_corridor(prediction.anomaly, corridor))

    def _class_names(self):
        return self.classes or CITYSCAPES_CLASSES

    def publish(self, header, prediction, threshold: float, display_range: Tuple[float, float]) -> None:
        wanted = self._wanted()
        if "anomaly_confidence" in wanted:
            confidence = confidence_image(prediction.anomaly, threshold, display_range)
            self.publishers["anomaly_confidence"].publish(fill_image(Image(header=header), confidence, "mono8"))
        if not wanted & set(OBJECT_OUTPUTS):
            self.tracker.reset()  # nobody looks: no objects, and no stale tracks when someone comes
            return
        h, w = prediction.anomaly.shape
        # projected whenever possible: the same objects (min_area_m2, distances) whoever listens
        projector = self.projector(w, h, header, warn=bool(wanted & {"obstacle_markers", "obstacle_points"}))
        obstacles = find_obstacles(prediction.anomaly, prediction.labels, threshold, self.config.settings,
                                   projector, self._class_names())
        tracked = self.tracker.update(obstacles.objects.objects)
        if "obstacle_mask" in wanted:
            mask = obstacles.objects.mono8([obj.index for _, obj in tracked], (w, h))
            self.publishers["obstacle_mask"].publish(fill_image(Image(header=header), mask, "mono8"))
        if "obstacles" in wanted:
            means = np.array([[obj.mean_score for _, obj in tracked]], np.float32).reshape(1, -1)
            confidences = (confidence_image(means, threshold, display_range)[0] / 255.0).tolist()
            self.publishers["obstacles"].publish(detection_array(self.vision_msgs, header, tracked, confidences))
        if projector is None:
            return
        if "obstacle_markers" in wanted:
            self.publishers["obstacle_markers"].publish(
                marker_array(header, tracked, projector.pose.level_from_camera()))
        if "obstacle_points" in wanted:
            self.publishers["obstacle_points"].publish(self._cloud(header, obstacles.objects, tracked, projector))

    def _cloud(self, header, objects, tracked, projector: GroundProjector) -> PointCloud2:
        points, ids = [], []
        if self.config.cloud == "all":
            ys, xs = np.nonzero(objects.ids)
            owner = objects.ids[ys, xs]
        for track_id, obj in tracked:
            if obj.ground is None:
                continue
            if self.config.cloud == "contact":  # found with the footprint already
                ground = obj.ground.contact_points
            else:
                mine = owner == obj.index
                ground = projector.at_pixels(xs[mine], ys[mine])
                ground = ground[~np.isnan(ground[:, 0])]
            points.append(ground)
            ids.append(np.full(len(ground), track_id, np.float32))
        if not points:
            return ground_cloud(header, np.zeros((0, 3)), np.zeros(0))
        return ground_cloud(header, np.concatenate(points), np.concatenate(ids))


#: TF poses this close reuse the projector's table (a static mount: always; a rebuild costs ≈ 75 ms)
SAME_HEIGHT_M, SAME_ANGLE_RAD = 0.005, math.radians(0.02)


def _same_pose(a: CameraPose, b: CameraPose) -> bool:
    return (abs(a.height_m - b.height_m) <= SAME_HEIGHT_M and abs(a.pitch_rad - b.pitch_rad) <= SAME_ANGLE_RAD
            and abs(a.roll_rad - b.roll_rad) <= SAME_ANGLE_RAD)
