"""The node's obstacle outputs over real rclpy / DDS: confidence, obstacle mask, markers, ground points
and — where vision_msgs imports — detections, each with the image's header, computed only while
subscribed.

The segmenter's prediction is replaced by the synthetic road scene (synthetic_road.py, 640×360, two
boxes at 8 m and 15 m), so that the outputs can be checked against the known geometry and the core.
"""

import math
import threading

import numpy as np
import pytest

from rosgraph import Probe, as_array, image_msg, wait_until
from rpl_perception.obstacles import confidence_image
from rpl_perception.segmenter import Prediction
from rpl_perception.topics import sibling_topic
from synthetic_road import HEIGHT_M, PITCH, D, scaled_k, synthetic_scene

CAM = "/front/image_raw"
FACTOR = 1 / 3
BOXES = [(-0.3, 0.3, 8.0), (2.0, 2.6, 15.0)]
DISTANCES = [8.0, math.hypot(2.0, 15.0)]
THRESHOLD = 0.5


def camera_info():
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(width=640, height=360, distortion_model="plumb_bob", k=scaled_k(FACTOR).ravel().tolist(),
                      d=D.tolist())


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene(BOXES, FACTOR)


@pytest.fixture(scope="module")
def interfaces():
    """Interface packages to make importable before the node starts (test_vision_msgs.py builds one)."""
    return None


@pytest.fixture(scope="module")
def graph(ros_env, scene, interfaces):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import AnomalyNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = AnomalyNode(context=context, parameter_overrides=[
        Parameter("image_topics", value=[CAM]), Parameter("backend", value="torch"),
        Parameter("network_width", value=256), Parameter("network_height", value=128),
        Parameter("anomaly_threshold", value=THRESHOLD), Parameter("obstacle_min_area_px", value=50),
        Parameter("camera_height_m", value=HEIGHT_M), Parameter("camera_pitch_deg", value=math.degrees(PITCH))])
    score, labels = scene
    node.segmenter.predict_batch = lambda images: [Prediction(labels, score, "rpl_energy") for _ in images]
    probe = Probe(context, [CAM])
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    executor.add_node(probe.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    wait_until(lambda: probe.publishers[CAM].get_subscription_count(), "the node to subscribe to the camera")
    yield node, probe
    executor.shutdown()
    spinner.join(timeout=10)
    node.destroy_node()
    probe.node.destroy_node()
    rclpy.shutdown(context=context)


class Listener:
    """Subscriptions to obstacle outputs, keeping every message by (name, stamp)."""

    def __init__(self, probe, types):
        self.received, self._lock = {}, threading.Lock()
        self.subscriptions = [probe.node.create_subscription(kind, sibling_topic(CAM, name), self._keeper(name), 10)
                              for name, kind in types.items()]

    def _keeper(self, name):
        def keep(msg):
            header = msg.header if hasattr(msg, "header") else msg.markers[0].header  # MarkerArray: its DELETEALL
            with self._lock:
                self.received[(name, header.stamp.sec, header.stamp.nanosec)] = msg
        return keep

    def get(self, name, header):
        key = (name, header.stamp.sec, header.stamp.nanosec)
        wait_until(lambda: key in self.received, f"{name} of the frame")
        with self._lock:
            return self.received[key]

    def close(self, probe):
        for subscription in self.subscriptions:
            probe.node.destroy_subscription(subscription)


def frame(probe):
    return probe.publish(CAM, image_msg(np.zeros((360, 640, 3), np.uint8), "rgb8"), frame_id="front_optical")


def served(node, count):
    """Wait until the node has finished ``count`` frames in all (the obstacle outputs come after the images)."""
    stats = node.cameras[0].stats.total
    wait_until(lambda: stats.published >= count, f"the node to finish frame {count}")


def test_nothing_is_computed_for_outputs_nobody_subscribes_to(graph, monkeypatch):
    from rpl_perception.ros import object_outputs

    node, probe = graph
    calls = []
    monkeypatch.setattr(object_outputs, "confidence_image", lambda *a: calls.append("confidence"))
    monkeypatch.setattr(object_outputs, "find_obstacles", lambda *a: calls.append("objects"))
    done = node.cameras[0].stats.total.published
    header = frame(probe)
    probe.outputs(CAM, header, ["anomaly_mask"])
    served(node, done + 1)
    assert calls == []


def test_ground_outputs_carry_the_header_and_the_scene_geometry(graph, scene):
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    node, probe = graph
    outputs = node.obstacle_outputs[node.cameras[0]]
    listener = Listener(probe, {"anomaly_confidence": Image, "obstacle_mask": Image,
                                "obstacle_markers": MarkerArray, "obstacle_points": PointCloud2})
    info = probe.node.create_publisher(CameraInfo, sibling_topic(CAM, "camera_info"), 10)
    try:
        wait_until(lambda: all(p.get_subscription_count() for n, p in outputs.publishers.items() if n != "obstacles"),
                   "the listener to subscribe")
        wait_until(lambda: info.get_subscription_count(), "the node to subscribe to camera_info")
        info.publish(camera_info())
        wait_until(lambda: outputs.projector(640, 360) is not None, "the node to take the CameraInfo")
        outputs.tracker.reset()  # persistence counts from here
        first = frame(probe)
        listener.get("obstacle_markers", first)  # served before the next (a newer frame replaces a waiting one)
        second = frame(probe)
        score, labels = scene

        confidence = listener.get("anomaly_confidence", second)
        assert confidence.header.frame_id == "front_optical" and confidence.encoding == "mono8"
        np.testing.assert_array_equal(as_array(confidence), confidence_image(score, THRESHOLD, node.display_range))

        # persistence: k = 2 of n = 3, so the first frame publishes no box and the second both
        assert [m.action for m in listener.get("obstacle_markers", first).markers] == [Marker.DELETEALL]
        markers = listener.get("obstacle_markers", second).markers
        boxes = [m for m in markers if m.type == Marker.CUBE]
        assert sorted(m.id for m in boxes) == [1, 2]
        assert all(m.header.frame_id == "front_optical" and m.header.stamp == second.stamp for m in markers)
        assert [m.text.split()[1] for m in markers if m.type == Marker.TEXT_VIEW_FACING]  # "#id distance m"

        cloud = listener.get("obstacle_points", second)
        assert cloud.header.stamp == second.stamp and cloud.header.frame_id == "front_optical"
        points = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)
        assert cloud.width == len(points) > 20 and sorted(set(points[:, 3].tolist())) == [1.0, 2.0]
        nearest = []
        for track_id in (1.0, 2.0):
            mine = points[points[:, 3] == track_id, :3]
            nearest.append(np.hypot(mine[:, 0], mine[:, 1] * math.sin(PITCH) + mine[:, 2] * math.cos(PITCH)).min())
        assert sorted(nearest) == pytest.approx(DISTANCES, rel=0.05)

        mask = as_array(listener.get("obstacle_mask", second))
        assert set(np.unique(mask)) == {0, 255}
        assert ((mask > 0) == (score > THRESHOLD)).mean() > 0.995  # both boxes, nothing else
        assert not as_array(listener.get("obstacle_mask", first)).any()
    finally:
        listener.close(probe)
        probe.node.destroy_publisher(info)


def test_the_cloud_of_all_pixels_or_of_the_contact_lines(ros_env, scene):
    from types import SimpleNamespace

    from std_msgs.msg import Header

    from rpl_perception.ground_projection import CameraIntrinsics, CameraPose, GroundProjector
    from rpl_perception.obstacles import ObstacleSettings, find_obstacles
    from rpl_perception.ros.object_outputs import ObstacleOutputs

    score, labels = scene
    projector = GroundProjector(CameraIntrinsics(640, 360, scaled_k(FACTOR), D), CameraPose(HEIGHT_M, PITCH), 40.0)
    found = find_obstacles(score, labels, THRESHOLD, ObstacleSettings(min_area_px=50), projector).objects
    tracked = [(7, obj) for obj in found.objects]
    sizes = {}
    for mode in ("contact", "all"):
        outputs = SimpleNamespace(config=SimpleNamespace(cloud=mode))
        cloud = ObstacleOutputs._cloud(outputs, Header(frame_id="cam"), found, tracked, projector)
        points = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)
        assert cloud.header.frame_id == "cam" and set(points[:, 3].tolist()) == {7.0}
        sizes[mode] = len(points)
    # contact: one point per column of each object; all: every pixel on the ground within range
    assert sizes["contact"] == sum(len(o.ground.contact_points) for o in found.objects)
    assert sizes["all"] == sum(o.area_px for o in found.objects) > 5 * sizes["contact"]


@pytest.mark.parametrize("changes,match", [
    ({"obstacle_confirm_frames": 4}, r"obstacle_confirm_frames \(4\) must be between 1 and obstacle_window_frames \(3\)"),
    ({"obstacle_corridor_classes": ["road", "lava"]}, r"\['lava'\] are unknown"),
    ({"obstacle_cloud": "some"}, "obstacle_cloud 'some' is unknown; choose contact or all"),
    ({"camera_height_m": 1.2, "camera_pitch_deg": 95.0}, "within ±90°"),
])
def test_bad_obstacle_parameters_are_refused_with_the_reason(ros_env, changes, match):
    from rpl_perception.ros.object_outputs import ObstacleConfig
    from rpl_perception.ros.parameters import PARAMETERS, ParameterError

    values = {spec.name: spec.default for spec in PARAMETERS}
    defaults = ObstacleConfig.from_values(values)
    assert defaults.pose is None and defaults.settings.corridor.classes == ("road", "sidewalk")
    with pytest.raises(ParameterError, match=match):
        ObstacleConfig.from_values({**values, **changes})
