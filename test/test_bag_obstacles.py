"""A recorded drive replayed through ``anomaly_node`` run as users run it (its executable with the shipped
parameter file; ``ros2 launch`` is not installed here): the obstacle outputs carry each recorded
image's header and the ground geometry of the CameraInfo and pose they were given.

The bag is written at test time, as a camera driver records: JPEG ``CompressedImage`` frames of the
shipped Udacity highway samples with ``CameraInfo`` beside them. It is played by this test over real DDS
(rosbag2's ``ros2 bag play`` is not on PyPI): every message in recorded order, each frame once the
node's outputs for the previous one came back.
"""

import importlib
import math

import cv2
import numpy as np
import pytest

import rosgraph
from rosgraph import REPO, Probe, Process, Spinner, as_array, venv_executable, wait_until
from rpl_perception.resources import SAMPLES_ROOT
from rpl_perception.topics import sibling_topic

pytest.importorskip("rosbags", reason="bags need the rosbags package (pip install '.[eval]')")

IMAGE = "/front/image_raw/compressed"
INFO = "/front/camera_info"
FRAME_ID = "front_camera_optical"
WIDTH, HEIGHT, FOCAL = 640, 360, 520.0
HEIGHT_M, PITCH_DEG = 1.5, 3.0
OUTPUTS = ("anomaly_confidence", "obstacle_mask", "obstacle_markers", "obstacle_points")


def write_drive(path, frames=6):
    """JPEG frames 100 ms apart, a CameraInfo before each (as drivers publish them)."""
    from rpl_perception.eval.bags import ImageBagWriter, _typestore

    store = _typestore()
    types = store.types
    stamp0 = 1_700_000_000_000_000_000
    files = sorted((SAMPLES_ROOT / "drive").glob("*.jpg"))[:frames]
    headers = []
    with ImageBagWriter(path) as bag:
        for i, file in enumerate(files):
            stamp = stamp0 + i * 100_000_000
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=FRAME_ID)
            k = np.array([FOCAL, 0, (WIDTH - 1) / 2, 0, FOCAL, (HEIGHT - 1) / 2, 0, 0, 1], np.float64)
            p = np.array([FOCAL, 0, (WIDTH - 1) / 2, 0, 0, FOCAL, (HEIGHT - 1) / 2, 0, 0, 0, 1, 0], np.float64)
            info = types["sensor_msgs/msg/CameraInfo"](
                header=header, height=HEIGHT, width=WIDTH, distortion_model="plumb_bob", d=np.zeros(5), k=k,
                r=np.eye(3).ravel(), p=p, binning_x=0, binning_y=0,
                roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False))
            bag.write_raw(INFO, "sensor_msgs/msg/CameraInfo", store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"),
                          stamp)
            rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(file)), cv2.COLOR_BGR2RGB), (WIDTH, HEIGHT),
                             interpolation=cv2.INTER_AREA)
            bag.write_compressed(IMAGE, rgb, stamp, fmt="jpeg", frame_id=FRAME_ID)
            headers.append((stamp // 10**9, stamp % 10**9))
    return headers


def recorded_messages(path):
    """(topic, rclpy message class, CDR bytes) in recorded order."""
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        for connection, _, raw in reader.messages():
            package, _, name = connection.msgtype.split("/")
            yield connection.topic, getattr(importlib.import_module(f"{package}.msg"), name), bytes(raw)


def test_a_recorded_drive_replayed_through_the_node_gives_objects_on_the_ground_with_its_headers(ros_env, tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    bag = tmp_path / "drive"
    headers = write_drive(bag)
    command = [venv_executable("anomaly_node"), "--ros-args", "--params-file", str(REPO / "config" / "anomaly.yaml"),
               "-p", f"image_topics:=[{IMAGE}]", "-p", "backend:=torch", "-p", "network_width:=512",
               "-p", "network_height:=256", "-p", f"camera_height_m:={HEIGHT_M}", "-p", f"camera_pitch_deg:={PITCH_DEG}",
               "-p", "obstacle_min_area_px:=50"]
    process = Process(command, ros_env)
    spinner = Spinner()
    probe = Probe(spinner.context, [])
    received = {}
    kinds = {"anomaly_confidence": Image, "obstacle_mask": Image, "obstacle_markers": MarkerArray,
             "obstacle_points": PointCloud2}

    def keeper(name):
        def keep(msg):
            header = msg.markers[0].header if name == "obstacle_markers" else msg.header  # its DELETEALL
            received[(name, header.stamp.sec, header.stamp.nanosec)] = msg
        return keep

    for name, kind in kinds.items():
        probe.node.create_subscription(kind, sibling_topic(IMAGE, name), keeper(name), 10)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {}
    spinner.spin(probe.node)
    try:
        wait_until(lambda: "serving " in process.output() or not process.alive(), "the node to serve", 180)
        assert process.alive(), process.output()
        messages = list(recorded_messages(bag))
        for topic, kind, _ in messages:  # all publishers first, in recorded order, as `ros2 bag play` does
            if topic not in publishers:
                publishers[topic] = probe.node.create_publisher(kind, topic, reliable)
        for topic, publisher in publishers.items():
            wait_until(publisher.get_subscription_count, f"the node to subscribe to {topic}")
        # the node's image reader turns reliable once its participant knows our image writer, which DDS
        # announced after the CameraInfo writer: from then on neither first message is dropped unseen
        rosgraph.wait_for_reliable_subscription(probe.node, publishers[IMAGE], timeout=30)
        wait_until(lambda: all(probe.node.count_publishers(sibling_topic(IMAGE, n)) for n in kinds),
                   "the node's obstacle outputs")
        for topic, _, raw in messages:
            publishers[topic].publish(raw)
            if topic == IMAGE:  # lockstep: the next frame once this one's outputs are back
                sec, nanosec = headers[len([k for k in received if k[0] == "obstacle_markers"])]
                try:
                    wait_until(lambda s=sec, n=nanosec: all((o, s, n) in received for o in OUTPUTS),
                               f"the outputs of the frame stamped {sec}.{nanosec:09d}", 120)
                except AssertionError as exc:
                    got = sorted(k[0] for k in received if k[1:] == (sec, nanosec))
                    raise AssertionError(f"{exc}; got {got}; the node said:\n{process.output()[-3000:]}") from None
    finally:
        process.signal_group(2)
        process.wait(timeout=30)
        spinner.close(probe.node)

    boxes = points = 0
    for sec, nanosec in headers:
        for name in OUTPUTS:
            header = received[(name, sec, nanosec)]
            header = header.markers[0].header if name == "obstacle_markers" else header.header
            assert (header.frame_id, header.stamp.sec, header.stamp.nanosec) == (FRAME_ID, sec, nanosec)
        confidence = as_array(received[("anomaly_confidence", sec, nanosec)])
        mask = as_array(received[("obstacle_mask", sec, nanosec)])
        assert confidence.shape == mask.shape == (HEIGHT, WIDTH)
        assert set(np.unique(mask)) <= {0, 255} and (confidence[mask > 0] >= 128).all()  # objects: above threshold
        markers = received[("obstacle_markers", sec, nanosec)].markers
        boxes += sum(m.type == Marker.CUBE for m in markers)
        cloud = received[("obstacle_points", sec, nanosec)]
        xyz = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)[:, :3]
        points += len(xyz)
        # on the ground: HEIGHT_M below the camera in the level frame, within obstacle_max_range_m (40 m)
        pitch = math.radians(PITCH_DEG)
        below = xyz[:, 1] * math.cos(pitch) + xyz[:, 2] * math.sin(pitch)
        ahead = -xyz[:, 1] * math.sin(pitch) + xyz[:, 2] * math.cos(pitch)
        np.testing.assert_allclose(below, HEIGHT_M, atol=1e-3)
        assert (np.hypot(xyz[:, 0], ahead) <= 40.0 + 1e-3).all()
    # the default persistence (2 of 3 frames) publishes from the second frame on
    assert boxes >= 1 and points >= 10, process.output()[-3000:]
