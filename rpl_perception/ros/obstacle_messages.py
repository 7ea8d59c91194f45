"""ROS messages of the obstacle outputs, built from the core's objects (:mod:`rpl_perception.obstacles`).

Every message carries the camera image's header: points and markers are in its optical frame
(``header.frame_id``; x right, y down, z forward), for a costmap or RViz to transform with TF.
``vision_msgs`` is imported by the caller, lazily: it is not on PyPI (a ROS distribution has it).
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from ..anomaly_objects import AnomalyObject
from ..ground_projection import quaternion_from_rotation
from ..labels import CITYSCAPES_CLASSES

__all__ = ["CLASS_ID", "ground_cloud", "marker_array", "detection_array"]

#: the class of every detection: unknown to the closed-set segmenter (Autoware's UNKNOWN)
CLASS_ID = "anomaly"
#: a monocular camera does not see an object's depth: the markers are drawn this deep (metres)
MARKER_DEPTH_M = 0.3
#: marker colours (RGBA): boxes orange, text white
BOX_COLOUR, TEXT_COLOUR = (1.0, 0.45, 0.0, 0.6), (1.0, 1.0, 1.0, 1.0)

_CLOUD_FIELDS = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                 for i, name in enumerate(("x", "y", "z", "intensity"))]

Tracked = Sequence[Tuple[int, AnomalyObject]]  # (stable id, object)


def ground_cloud(header, points: np.ndarray, intensity: np.ndarray) -> PointCloud2:
    """N×3 points (optical frame) and N intensities (the object id) → an unorganised PointCloud2."""
    data = np.empty((len(points), 4), np.float32)
    data[:, :3] = points
    data[:, 3] = intensity
    return PointCloud2(header=header, height=1, width=len(points), fields=_CLOUD_FIELDS, is_bigendian=False,
                       point_step=16, row_step=16 * len(points), data=data.tobytes(), is_dense=True)


def class_name(train_id: int, classes: Sequence[str] = CITYSCAPES_CLASSES) -> str:
    return classes[train_id] if 0 <= train_id < len(classes) else str(train_id)


def _set(vector, values) -> None:
    vector.x, vector.y, vector.z = (float(v) for v in values)


def marker_array(header, tracked: Tracked, level_from_camera: np.ndarray, lifetime_ns: int = 0) -> MarkerArray:
    """A DELETEALL, then per projected object a box standing on its contact line (width × height ×
    :data:`MARKER_DEPTH_M`, upright in the level frame) and a text with its id, distance and the
    class it was mistaken for. Objects without a ground footprint have no marker."""
    camera_from_level = level_from_camera.T
    orientation = quaternion_from_rotation(camera_from_level)
    markers: List[Marker] = [Marker(header=header, action=Marker.DELETEALL)]
    for track_id, obj in tracked:
        if obj.ground is None:
            continue
        g = obj.ground
        height = max(g.height_m, 0.1)
        centre = np.asarray(g.contact) + camera_from_level @ np.array([0.0, -height / 2, MARKER_DEPTH_M / 2])
        box = Marker(header=header, ns="anomaly_boxes", id=track_id, type=Marker.CUBE, action=Marker.ADD)
        _set(box.pose.position, centre)
        box.pose.orientation.x, box.pose.orientation.y, box.pose.orientation.z, box.pose.orientation.w = orientation
        _set(box.scale, (max(g.width_m, 0.1), height, MARKER_DEPTH_M))
        box.color.r, box.color.g, box.color.b, box.color.a = BOX_COLOUR
        text = Marker(header=header, ns="anomaly_labels", id=track_id, type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, text=f"#{track_id} {g.distance_m:.1f} m ({class_name(obj.mistaken_for)}?)")
        _set(text.pose.position, centre + camera_from_level @ np.array([0.0, -height / 2 - 0.3, 0.0]))
        text.pose.orientation.w = 1.0
        text.scale.z = 0.4
        text.color.r, text.color.g, text.color.b, text.color.a = TEXT_COLOUR
        for marker in (box, text):
            marker.lifetime.sec, marker.lifetime.nanosec = divmod(lifetime_ns, 1_000_000_000)
        markers += [box, text]
    return MarkerArray(markers=markers)


def detection_array(vision_msgs, header, tracked: Tracked, confidences: Sequence[float]):
    """``vision_msgs/Detection2DArray``: per object its box (camera pixels), id, one hypothesis
    :data:`CLASS_ID` with the object's mean confidence (0–1, the mono8 confidence's scale) and, where
    projected, its contact point (optical frame) as the hypothesis pose. ``vision_msgs``: the module."""
    detections = []
    for (track_id, obj), confidence in zip(tracked, confidences):
        detection = vision_msgs.Detection2D(header=header, id=str(track_id))
        x0, y0, x1, y1 = obj.box
        centre = detection.bbox.center
        target = centre.position if hasattr(centre, "position") else centre  # vision_msgs ≥ 4 / older
        target.x, target.y = (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0
        detection.bbox.size_x, detection.bbox.size_y = float(x1 - x0), float(y1 - y0)
        hypothesis = vision_msgs.ObjectHypothesisWithPose()
        fields = hypothesis.hypothesis if hasattr(hypothesis, "hypothesis") else hypothesis
        fields.class_id, fields.score = CLASS_ID, float(confidence)
        if obj.ground is not None:
            _set(hypothesis.pose.pose.position, obj.ground.contact)
        hypothesis.pose.pose.orientation.w = 1.0
        detection.results = [hypothesis]
        detections.append(detection)
    return vision_msgs.Detection2DArray(header=header, detections=detections)


def import_vision_msgs() -> Optional[object]:
    """The ``vision_msgs.msg`` module, or None where it is not installed."""
    try:
        import vision_msgs.msg as module
    except ImportError:
        return None
    return module
