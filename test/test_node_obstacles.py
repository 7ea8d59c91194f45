"""The node's obstacle outputs over real rclpy / DDS: confidence, obstacle mask, markers, ground points
and — where vision_msgs imports — detections, each with the image's header, computed only while
subscribed.

The segmenter's prediction is replaced by the synthetic road scene (synthetic_road.py, 640×360, two
boxes at 8 m and 15 m), so that the outputs can be checked against the known geometry and the core.
"""

import math
import sys
import threading
import types
from contextlib import contextmanager

import numpy as np
import pytest

from rosgraph import as_array, image_msg, node_in_process, wait_until
from rpl_perception.obstacles import confidence_image
from rpl_perception.segmenter import Prediction
from rpl_perception.topics import sibling_topic
from synthetic_road import HEIGHT_M, PITCH, D, scaled_k, synthetic_scene

CAM = "/front/image_raw"
TF_CAM = "/tf_front/image_raw"  # a node of its own: the module's node serves CAM meanwhile
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


@contextmanager
def running_node(scene, topic=CAM, **parameters):
    """The node serving ``topic`` (its prediction replaced by the synthetic scene) and a probe."""
    values = {"backend": "torch", "network_width": 256, "network_height": 128, "anomaly_threshold": THRESHOLD,
              "obstacle_min_area_px": 50, **parameters}
    with node_in_process([topic], **values) as (node, probe):
        score, labels = scene
        node.segmenter.predict_batch = lambda images: [Prediction(labels, score, "rpl_energy") for _ in images]
        wait_until(lambda: probe.publishers[topic].get_subscription_count(), "the node to subscribe to the camera")
        yield node, probe


@pytest.fixture(scope="module")
def graph(ros_env, scene, interfaces):
    with running_node(scene, camera_height_m=HEIGHT_M, camera_pitch_deg=math.degrees(PITCH)) as running:
        yield running


class Listener:
    """Subscriptions to obstacle outputs, keeping every message by (name, stamp)."""

    def __init__(self, probe, types, topic=CAM):
        self.received, self._lock = {}, threading.Lock()
        self.subscriptions = [probe.node.create_subscription(kind, sibling_topic(topic, name), self._keeper(name), 10)
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


def frame(probe, topic=CAM):
    return probe.publish(topic, image_msg(np.zeros((360, 640, 3), np.uint8), "rgb8"), frame_id="front_optical")


def served(node, count):
    """Wait until the node has finished ``count`` frames in all (the obstacle outputs come after the images)."""
    stats = node.cameras[0].stats.total
    wait_until(lambda: stats.published >= count, f"the node to finish frame {count}")


def assert_cloud_of_the_scene(cloud, header):
    """Both boxes' ground points, in the image's frame, at the scene's distances (5 %)."""
    assert cloud.header.stamp == header.stamp and cloud.header.frame_id == "front_optical"
    points = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)
    assert cloud.width == len(points) > 20 and sorted(set(points[:, 3].tolist())) == [1.0, 2.0]
    nearest = []
    for track_id in (1.0, 2.0):
        mine = points[points[:, 3] == track_id, :3]
        nearest.append(np.hypot(mine[:, 0], -mine[:, 1] * math.sin(PITCH) + mine[:, 2] * math.cos(PITCH)).min())
    assert sorted(nearest) == pytest.approx(DISTANCES, rel=0.05)


def publish_camera_info(probe, outputs, topic=CAM):
    from sensor_msgs.msg import CameraInfo

    info = probe.node.create_publisher(CameraInfo, sibling_topic(topic, "camera_info"), 10)
    wait_until(lambda: info.get_subscription_count(), "the node to subscribe to camera_info")

    def taken():  # published again until taken, as drivers do: the node's best-effort reader drops a
        info.publish(camera_info())  # sample sent before it has discovered our writer
        return outputs._intrinsics is not None

    wait_until(taken, "the node to take the CameraInfo")
    return info


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
    from sensor_msgs.msg import Image, PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    node, probe = graph
    outputs = node.obstacle_outputs[node.cameras[0]]
    listener = Listener(probe, {"anomaly_confidence": Image, "obstacle_mask": Image,
                                "obstacle_markers": MarkerArray, "obstacle_points": PointCloud2})
    info = None
    try:
        wait_until(lambda: all(p.get_subscription_count() for n, p in outputs.publishers.items() if n != "obstacles"),
                   "the listener to subscribe")
        info = publish_camera_info(probe, outputs)
        assert outputs.projector(640, 360) is not None
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

        assert_cloud_of_the_scene(listener.get("obstacle_points", second), second)

        mask = as_array(listener.get("obstacle_mask", second))
        assert set(np.unique(mask)) == {0, 255}
        assert ((mask > 0) == (score > THRESHOLD)).mean() > 0.995  # both boxes, nothing else
        assert not as_array(listener.get("obstacle_mask", first)).any()
    finally:
        listener.close(probe)
        if info is not None:
            probe.node.destroy_publisher(info)


class FakeTf2:
    """tf2_ros's API as the node uses it (Buffer, TransformListener, lookup_transform, TransformException),
    holding one transform: the camera of the synthetic scene over ``base_footprint``, turned by a yaw."""

    def __init__(self, yaw=0.7):
        from geometry_msgs.msg import Quaternion, TransformStamped

        from rpl_perception.ground_projection import CameraPose, quaternion_from_rotation

        level_to_base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # x forward, y left, z up
        yaw_turn = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        rotation = yaw_turn @ level_to_base @ CameraPose(HEIGHT_M, PITCH).level_from_camera()
        self.transform = TransformStamped()
        self.transform.transform.translation.x, self.transform.transform.translation.z = 1.2, HEIGHT_M
        self.transform.transform.rotation = Quaternion(**dict(zip("xyzw", quaternion_from_rotation(rotation))))
        self.lookups = []
        fake = self

        class TransformException(Exception):
            pass

        class Buffer:
            def __init__(self, node=None):
                self.node = node

            def lookup_transform(self, target, source, time, timeout=None):
                fake.lookups.append((target, source, time.nanoseconds, timeout.nanoseconds))
                if (target, source) != ("base_footprint", "front_optical"):
                    raise TransformException(f'"{source}" passed to lookupTransform argument source_frame '
                                             "does not exist")
                return fake.transform

        class TransformListener:
            def __init__(self, buffer, node):
                fake.listener_node = node

        self.module = types.ModuleType("tf2_ros")
        self.module.Buffer, self.module.TransformListener = Buffer, TransformListener
        self.module.TransformException = TransformException


def test_the_camera_pose_from_tf_projects_as_the_parameters_do(ros_env, scene, monkeypatch):
    """``ground_frame`` set: the pose comes from the transform base_footprint <- the image's frame at its
    stamp (here a fake tf2_ros: it is not on PyPI), and the cloud has the scene's distances although
    camera_height_m is 0."""
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header

    from rpl_perception.ros.camera_pose import LOOKUP_TIMEOUT_S

    tf2 = FakeTf2()
    monkeypatch.setitem(sys.modules, "tf2_ros", tf2.module)
    with running_node(scene, TF_CAM, ground_frame="base_footprint") as (node, probe):
        outputs = node.obstacle_outputs[node.cameras[0]]
        assert tf2.listener_node is node and outputs.config.pose is None
        listener = Listener(probe, {"obstacle_points": PointCloud2}, TF_CAM)
        info = publish_camera_info(probe, outputs, TF_CAM)
        try:
            wait_until(lambda: outputs.publishers["obstacle_points"].get_subscription_count(), "the subscription")
            outputs.tracker.reset()
            first = frame(probe, TF_CAM)
            listener.get("obstacle_points", first)  # served before the next (a newer frame replaces a waiting one)
            second = frame(probe, TF_CAM)
            assert_cloud_of_the_scene(listener.get("obstacle_points", second), second)
            stamp_ns = second.stamp.sec * 10**9 + second.stamp.nanosec
            assert ("base_footprint", "front_optical", stamp_ns, int(LOOKUP_TIMEOUT_S * 1e9)) in tf2.lookups
            assert first.stamp != second.stamp

            pose = outputs.pose(second)
            assert (pose.height_m, pose.pitch_rad, pose.roll_rad) == pytest.approx((HEIGHT_M, PITCH, 0.0), abs=1e-9)
            elsewhere = Header(stamp=second.stamp, frame_id="rear_optical")
            assert outputs.projector(640, 360, elsewhere) is None
            assert outputs._no_pose_reason.startswith("no transform base_footprint <- rear_optical at the image's "
                                                      'stamp ("rear_optical" passed to lookupTransform')
            unnamed = Header(stamp=second.stamp)
            assert outputs.pose(unnamed) is None and "no header.frame_id" in outputs._no_pose_reason
        finally:
            listener.close(probe)
            probe.node.destroy_publisher(info)


def test_ground_frame_without_tf2_ros_is_refused_with_what_to_do(ros_env, monkeypatch):
    from rpl_perception.ros.camera_pose import TfCameraPose
    from rpl_perception.ros.parameters import ParameterError

    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # import fails as where it is not installed
    with pytest.raises(ParameterError, match=r"ground_frame 'base_footprint' needs tf2_ros \(ros-<distro>-tf2-ros"):
        TfCameraPose(object(), "base_footprint")


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
