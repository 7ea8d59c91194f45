"""The anomaly node on real rclpy and real DDS (PyPI ros-* wheels), in-process and as a process.

Each session talks on its own random ROS_DOMAIN_ID, localhost only, so parallel runs never meet.
The network runs at 256×128 to keep the file fast on two CPU cores.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpl_perception.backends.tensorrt_build import tensorrt_available
from rpl_perception.ros.frame_buffer import LatestFrameBuffer
from rpl_perception.ros.stats import ERROR, OK, WARN, CameraStats
from rpl_perception.ros.topics import check_topics, output_topics, sibling_topic

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "rpl_perception" / "samples" / "images" / "animals03_Zebras_in_the_road.jpg"
NETWORK = (256, 128)
CAM_A, CAM_B = "/cam_a/image_raw", "/cam_b/image_raw/compressed"
TIMEOUT = 30.0
ALL_OUTPUTS = ("semantic", "anomaly", "anomaly_mask", "semantic_color", "overlay")


# -- ROS-free parts ------------------------------------------------------------------------------

@pytest.mark.parametrize("topic,semantic", [
    ("/cam/image_raw", "/cam/semantic"), ("/cam/image_raw/compressed", "/cam/semantic"),
    ("image", "semantic"), ("/image", "/semantic"), ("front/left/image", "front/left/semantic"),
    ("~/image", "~/semantic"),
])
def test_outputs_are_siblings_of_the_input(topic, semantic):
    assert sibling_topic(topic, "semantic") == semantic
    assert output_topics(topic)["anomaly_mask"] == semantic.replace("semantic", "anomaly_mask")


@pytest.mark.parametrize("topics,match", [
    ([], "image_topics is empty"),
    (["/a/image", "/a/image"], "lists a topic twice"),
    (["/a/image", "/a/image_raw"], "would both publish '/a/semantic'"),
    (["/a/image", "/a/overlay"], "'/a/overlay' is also an output of '/a/image'"),
    (["/a/image "], "is not a topic name"),
])
def test_topic_clashes_are_refused(topics, match):
    with pytest.raises(ValueError, match=match):
        check_topics(topics)


def test_frame_buffer_keeps_only_the_newest_frame_per_camera():
    buffer = LatestFrameBuffer()
    assert buffer.put("a", 1) is False
    assert buffer.put("a", 2) is True  # 1 was never taken: dropped
    assert buffer.put("b", 3) is False
    assert len(buffer) == 2
    assert buffer.take(timeout=0) == {"a": 2, "b": 3}
    assert buffer.take(timeout=0.01) == {}
    taker = threading.Thread(target=lambda: results.append(buffer.take()))
    results = []
    taker.start()
    buffer.put("b", 4)
    taker.join(timeout=5)
    assert results == [{"b": 4}]
    buffer.close()
    assert buffer.take(timeout=1) is None


def test_camera_stats_levels_and_values():
    stats = CameraStats(now=0.0)
    report = stats.report(now=1.0)
    assert (report.level, report.message) == (WARN, "no frame received yet")
    for i in range(10):
        stats.on_received(now=1.0 + i * 0.1)
    for latency in (0.1, 0.2, 0.3, 0.4):
        stats.on_published(latency, inference=0.05, batch_size=2)
    for _ in range(6):
        stats.on_dropped()
    report = stats.report(now=2.0)
    values = dict(report.values)
    assert report.level == WARN and "dropped 6 of 10 frames" in report.message
    assert values["input rate [Hz]"] == "10.00" and values["output rate [Hz]"] == "4.00"
    assert values["latency p50 [ms]"] == "250.0" and values["latency p95 [ms]"] == "385.0"
    assert values["inference [ms]"] == "50.0" and values["batch size"] == "2.00"
    assert values["dropped frames"] == "6"
    stats.on_received(now=2.5)
    stats.on_published(0.1, 0.05, 1)
    assert stats.report(now=3.0).level == OK
    stats.on_received(now=3.5)
    stats.on_rejected("encoding 'x' is not supported")
    report = stats.report(now=4.0)
    assert report.level == ERROR
    assert report.message == "1 of 1 messages rejected: encoding 'x' is not supported"
    assert dict(report.values)["rejected messages"] == "1"
    assert stats.report(now=10.0).message == "no frame for 6.5 s"


# -- ROS graph fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ros_env():
    """A private DDS domain on localhost for this test session (set before any rclpy.init)."""
    pytest.importorskip("rclpy", reason="needs rclpy and the message packages (pip install .[ros])")
    patch = pytest.MonkeyPatch()
    patch.setenv("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    patch.setenv("ROS_LOCALHOST_ONLY", "1")
    patch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    yield dict(os.environ)
    patch.undo()


def wait_until(predicate, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Probe:
    """A test node: publishes camera frames, records every output by (topic, stamp)."""

    def __init__(self, context, cameras):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from sensor_msgs.msg import CompressedImage, Image

        self.node = Node("probe", context=context)
        self._lock = threading.Lock()
        self.received = {}
        self.diagnostics = []
        self.publishers = {}
        for camera in cameras:
            kind = CompressedImage if camera.endswith("/compressed") else Image
            self.publishers[camera] = self.node.create_publisher(kind, camera, 10)
            for topic in output_topics(camera).values():
                self.node.create_subscription(Image, topic, self._keeper(topic), 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _keeper(self, topic):
        def keep(msg):
            with self._lock:
                self.received[(topic, msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
        return keep

    def _on_diagnostics(self, msg):
        with self._lock:
            self.diagnostics.append(msg)

    def publish(self, camera, msg, frame_id="camera"):
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        self.publishers[camera].publish(msg)
        return msg.header

    def outputs(self, camera, header, names=ALL_OUTPUTS):
        """Wait for the outputs of the frame with ``header``; {name: Image}."""
        topics = output_topics(camera)
        keys = {name: (topics[name], header.stamp.sec, header.stamp.nanosec) for name in names}
        with_all = lambda: all(k in self.received for k in keys.values())  # noqa: E731
        stamp = f"{header.stamp.sec}.{header.stamp.nanosec:09d}"
        wait_until(with_all, f"{', '.join(names)} of the frame stamped {stamp}")
        with self._lock:
            return {name: self.received[key] for name, key in keys.items()}

    def status(self, name):
        with self._lock:
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name == name:
                        return status
        return None


@pytest.fixture(scope="module")
def graph(ros_env):
    """The node under test (two cameras, one raw, one compressed) and a probe, spun in a thread."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import AnomalyNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = AnomalyNode(context=context, parameter_overrides=[
        Parameter("image_topics", value=[CAM_A, CAM_B]), Parameter("backend", value="torch"),
        Parameter("network_width", value=NETWORK[0]), Parameter("network_height", value=NETWORK[1])])
    probe = Probe(context, [CAM_A, CAM_B])
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    executor.add_node(probe.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    for camera in node.cameras:  # discovery: every output has the probe as a subscriber
        wait_until(lambda: all(p.get_subscription_count() for p in camera.publishers.values()),
                   f"the probe to subscribe to the outputs of {camera.topic}")
    for publisher in probe.publishers.values():
        wait_until(lambda: publisher.get_subscription_count(), "the node to subscribe to the inputs")
    yield node, probe
    executor.shutdown()
    spinner.join(timeout=10)
    node.destroy_node()
    probe.node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def reference():
    from rpl_perception import AnomalySegmenter

    return AnomalySegmenter.from_pretrained(network_size=NETWORK)


def sample_rgb(width=192, height=96):
    bgr = cv2.resize(cv2.imread(str(SAMPLE)), (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_msg(pixels, encoding, pad=0):
    from sensor_msgs.msg import Image

    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


def png_msg(rgb):
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format="png")
    msg.data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    return msg


def as_array(msg):
    from rpl_perception.ros.codec import image_to_array

    return np.array(image_to_array(msg))


# -- the node in-process -------------------------------------------------------------------------

def test_outputs_match_the_core_prediction(graph, reference):
    from rpl_perception.visualize import colorize_labels, overlay

    node, probe = graph
    rgb = sample_rgb()
    header = probe.publish(CAM_A, image_msg(rgb, "rgb8"), frame_id="cam_a_optical")
    out = probe.outputs(CAM_A, header)
    expected = reference.predict(rgb)

    encodings = {name: msg.encoding for name, msg in out.items()}
    assert encodings == {"semantic": "mono8", "anomaly": "32FC1", "anomaly_mask": "mono8",
                         "semantic_color": "rgb8", "overlay": "rgb8"}
    for msg in out.values():
        assert (msg.width, msg.height) == (192, 96)
        assert msg.header.frame_id == "cam_a_optical" and msg.header.stamp == header.stamp
    labels, anomaly = as_array(out["semantic"]), as_array(out["anomaly"])
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_allclose(anomaly, expected.anomaly, rtol=0, atol=1e-5)
    threshold = reference.anomaly_threshold
    assert node.threshold == threshold
    np.testing.assert_array_equal(as_array(out["anomaly_mask"]), np.where(anomaly > threshold, 255, 0))
    assert 0 < (anomaly > threshold).mean() < 1  # the sample has both normal and anomalous pixels
    np.testing.assert_array_equal(as_array(out["semantic_color"]), colorize_labels(labels))
    low, high = reference.display_range
    np.testing.assert_array_equal(as_array(out["overlay"]), overlay(rgb, anomaly, low, high, threshold, 0.5))


def test_padded_bgr8_and_compressed_inputs_give_the_same_labels(graph, reference):
    node, probe = graph
    rgb = sample_rgb()
    expected = reference.predict(rgb)
    header = probe.publish(CAM_A, image_msg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "bgr8", pad=13))
    np.testing.assert_array_equal(as_array(probe.outputs(CAM_A, header, ["semantic"])["semantic"]),
                                  expected.labels)
    header = probe.publish(CAM_B, png_msg(rgb), frame_id="cam_b_optical")
    out = probe.outputs(CAM_B, header)
    assert out["anomaly"].header.frame_id == "cam_b_optical"
    assert out["semantic"].header.frame_id == "cam_b_optical"
    np.testing.assert_array_equal(as_array(out["semantic"]), expected.labels)
    np.testing.assert_allclose(as_array(out["anomaly"]), expected.anomaly, rtol=0, atol=1e-5)


def test_two_cameras_are_batched_through_one_model(graph, reference, monkeypatch):
    node, probe = graph
    batch_sizes = []
    predict_batch = node.segmenter.predict_batch
    monkeypatch.setattr(node.segmenter, "predict_batch",
                        lambda images: batch_sizes.append(len(images)) or predict_batch(images))
    rgb_a, rgb_b = sample_rgb(), np.ascontiguousarray(sample_rgb()[:, ::-1])
    for _ in range(5):  # frames that arrive while the worker is busy wait together
        probe.publish(CAM_A, image_msg(rgb_a, "rgb8"))
        header_a = probe.publish(CAM_A, image_msg(rgb_a, "rgb8"), frame_id="a")
        header_b = probe.publish(CAM_B, png_msg(rgb_b), frame_id="b")
        out_a = probe.outputs(CAM_A, header_a, ["semantic"])["semantic"]
        out_b = probe.outputs(CAM_B, header_b, ["semantic"])["semantic"]
        if 2 in batch_sizes:
            break
    assert 2 in batch_sizes, f"never saw both cameras in one batch: {batch_sizes}"
    assert max(batch_sizes) == 2  # at most one frame per camera per batch
    # batching changes float summation order at most: labels agree on (almost) every pixel
    assert (as_array(out_a) == reference.predict(rgb_a).labels).mean() > 0.999
    assert (as_array(out_b) == reference.predict(rgb_b).labels).mean() > 0.999
    assert (out_a.header.frame_id, out_b.header.frame_id) == ("a", "b")


def test_overload_drops_old_frames_and_counts_them(graph):
    node, probe = graph
    stats = node.cameras[0].stats
    before = vars(stats.total).copy()
    rgb = sample_rgb()
    headers = []
    for _ in range(20):  # 200 Hz: DDS delivers every frame, inference cannot keep up
        headers.append(probe.publish(CAM_A, image_msg(rgb, "rgb8")))
        time.sleep(0.005)
    last = probe.outputs(CAM_A, headers[-1], ["anomaly"])  # the newest frame is always served
    assert last["anomaly"].header.stamp == headers[-1].stamp

    def delta():
        return {k: v - before[k] for k, v in vars(stats.total).items()}

    # every frame that reached the node was either served or dropped, none is still queued
    wait_until(lambda: delta()["published"] + delta()["dropped"] == delta()["received"],
               f"the counts to settle: {delta()}")
    assert delta()["received"] >= 15  # best effort: DDS itself may lose a few
    assert delta()["dropped"] > 0
    assert delta()["rejected"] == 0 and delta()["failed"] == 0
    served = sum((output_topics(CAM_A)["anomaly"], h.stamp.sec, h.stamp.nanosec) in probe.received
                 for h in headers)
    assert served == delta()["published"]


def bad_images():
    """(what is wrong, message) for every kind of bad sensor_msgs/Image."""
    good = image_msg(sample_rgb(), "rgb8")

    def variant(**fields):
        msg = image_msg(sample_rgb(), "rgb8")
        for key, value in fields.items():
            setattr(msg, key, value)
        return msg

    return [
        ("encoding 'hsv8' is not supported", variant(encoding="hsv8")),
        ("step 100 is smaller than width × bytes per pixel", variant(step=100)),
        ("fewer than step × height", variant(data=bytes(good.data)[:1000])),
        ("empty image: width 0", variant(width=0)),
        ("empty image: width 192, height 0", variant(height=0)),
        ("exceeds the largest accepted side", variant(width=100_000, step=300_000)),
    ]


def test_bad_input_is_skipped_counted_and_the_next_good_frame_served(graph, reference):
    from sensor_msgs.msg import CompressedImage

    node, probe = graph
    rgb = sample_rgb()
    expected = reference.predict(rgb).labels
    garbage = CompressedImage(format="jpeg")
    garbage.data = b"\xff\xd8\xff this is no jpeg"
    cases = [(CAM_A, problem, msg) for problem, msg in bad_images()]
    cases.append((CAM_B, "cannot decode", garbage))
    for camera, problem, bad in cases:
        stats = node.cameras[[CAM_A, CAM_B].index(camera)].stats
        rejected = stats.total.rejected
        probe.publish(camera, bad)
        wait_until(lambda: stats.total.rejected == rejected + 1, f"the node to reject: {problem}")
        good = png_msg(rgb) if camera == CAM_B else image_msg(rgb, "rgb8")
        header = probe.publish(camera, good)
        labels = as_array(probe.outputs(camera, header, ["semantic"])["semantic"])
        np.testing.assert_array_equal(labels, expected, err_msg=f"after: {problem}")
    # diagnostics report the rejections with the last problem, by topic
    name = f"rpl_anomaly: {CAM_A}"
    status = wait_until(lambda: (s := probe.status(name)) and dict((kv.key, kv.value) for kv in s.values)
                        ["rejected messages"] == "6" and s, "diagnostics counting 6 rejections")
    values = {kv.key: kv.value for kv in status.values}
    assert "exceeds the largest accepted side" in values["last rejection"]
    # camera B reports on its own once-a-second cycle: wait for a status that includes its rejection
    name_b = f"rpl_anomaly: {CAM_B}"
    wait_until(lambda: (s := probe.status(name_b)) and dict((kv.key, kv.value) for kv in s.values)
               ["rejected messages"] == "1", "diagnostics counting camera B's rejection")


def test_diagnostics_report_each_camera_and_the_model(graph):
    node, probe = graph
    header = probe.publish(CAM_A, image_msg(sample_rgb(), "rgb8"), frame_id="cam_a_optical")
    probe.outputs(CAM_A, header, ["anomaly"])
    t0 = len(probe.diagnostics)
    wait_until(lambda: len(probe.diagnostics) >= t0 + 2, "two diagnostics messages")
    array = probe.diagnostics[-1]
    names = [s.name for s in array.status]
    assert names == [f"rpl_anomaly: {CAM_A}", f"rpl_anomaly: {CAM_B}", "rpl_anomaly: model"]
    camera_a = array.status[0]
    assert camera_a.hardware_id == "cam_a_optical"
    assert camera_a.level in (bytes([OK]), bytes([WARN]), bytes([ERROR]))
    keys = [kv.key for kv in camera_a.values]
    for key in ("input rate [Hz]", "output rate [Hz]", "dropped frames", "latency p50 [ms]",
                "latency p95 [ms]", "inference [ms]", "rejected messages"):
        assert key in keys
    model = {kv.key: kv.value for kv in array.status[2].values}
    assert model["network size"] == "256x128" and model["backend"] == "torch"
    assert array.status[2].level == b"\x00"


@pytest.mark.parametrize("overrides,match", [
    ({"image_topics": ["/a/image", "/a/image_raw"]}, "would both publish '/a/semantic'"),
    ({"image_topics": ["/cam-1/image"]}, "image_topics: '/cam-1/image' is not a valid topic name: .*"
                                         "must not contain characters other than alphanumerics"),
    ({"network_width": 100, "network_height": 128}, "multiples of 32"),
    ({"network_width": 256}, "must both be set or both be 0"),
    ({"score": "surprise"}, "score 'surprise' is unknown"),
    ({"backend": "cuda"}, "backend 'cuda' is unknown"),
    ({"device": "gpu"}, "device 'gpu' is unknown"),
    pytest.param({"backend": "tensorrt", "network_width": 256, "network_height": 128},
                 "no backend 'tensorrt' can run here",
                 marks=pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")),
    ({"qos_reliability": "sometimes"}, "qos_reliability 'sometimes' is unknown"),
    ({"model": "/no/such/model.safetensors"}, "model file '/no/such/model.safetensors' does not exist"),
    ({"overlay_alpha": 1.5}, "parameter overlay_alpha: .*out of range"),
    ({"qos_depth": 2.5}, "parameter qos_depth: .*expecting type 'INTEGER'"),
])
def test_bad_parameters_are_refused_with_a_clear_error(ros_env, overrides, match):
    import rclpy
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import AnomalyNode, ParameterError

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ParameterError, match=match):
            AnomalyNode(context=context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    finally:
        rclpy.shutdown(context=context)


# -- the executable ------------------------------------------------------------------------------

def anomaly_node_executable():
    path = shutil.which("anomaly_node", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if path is None:
        pytest.skip("anomaly_node is not installed (pip install -e .)")
    return path


@pytest.mark.parametrize("stop,backend", [(signal.SIGINT, "auto"), (signal.SIGTERM, "torch")])
def test_the_executable_serves_and_stops_cleanly(ros_env, stop, backend):
    """The shipped parameter file, then Ctrl-C or SIGTERM: exit code 0 and no traceback. ``auto``
    exports the model to ONNX on its first run here (cached after)."""
    import rclpy

    topic = f"/proc_{stop.name.lower()}/image_raw"
    process = subprocess.Popen(
        [anomaly_node_executable(), "--ros-args", "--params-file", str(REPO / "config" / "anomaly.yaml"),
         "-p", f"image_topics:=[{topic}]", "-p", "network_width:=256", "-p", "network_height:=128",
         "-p", "qos_reliability:=reliable", "-p", f"backend:={backend}"],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Probe(context, [topic])
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        wait_until(lambda: probe.publishers[topic].get_subscription_count() or process.poll() is not None,
                   "the node to subscribe")
        assert process.poll() is None, process.communicate()[1]
        probe.publish(topic, image_msg(sample_rgb(), "yuv444"))
        wait_until(lambda: (s := probe.status(f"rpl_anomaly: {topic}"))
                   and {kv.key: kv.value for kv in s.values}["rejected messages"] == "1",
                   "diagnostics counting the bad frame")
        header = probe.publish(topic, image_msg(sample_rgb(), "rgb8"))
        out = probe.outputs(topic, header, ["anomaly", "semantic"])
        assert out["anomaly"].encoding == "32FC1" and out["anomaly"].width == 192
    finally:
        process.send_signal(stop)
        try:
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
            executor.shutdown()
            spinner.join(timeout=10)
            probe.node.destroy_node()
            rclpy.shutdown(context=context)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "[ERROR]" in stderr and f"{topic}: skipped a message: encoding 'yuv444' is not supported" in stderr


def test_the_executable_exits_with_a_clear_error_on_bad_parameters(ros_env):
    result = subprocess.run([anomaly_node_executable(), "--ros-args",
                             "-p", "image_topics:=[/a/image, /a/image2]"],
                            env=ros_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert ("cannot start: image_topics: image topics '/a/image' and '/a/image2' would both publish"
            in result.stderr)
