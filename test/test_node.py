"""The anomaly node in-process, on real rclpy and real DDS (PyPI ros-* wheels).

Each session talks on its own random ROS_DOMAIN_ID, localhost only, so parallel runs never meet.
The network runs at 256×128 to keep the file fast on two CPU cores. The node as a process, and frames
from other processes: test_node_process.py.
"""

import math
import threading
import time

import cv2
import numpy as np
import pytest

from rosgraph import (
    Probe,
    Spinner,
    as_array,
    blocked_inference,
    image_msg,
    node_in_process,
    png_msg,
    sample_rgb,
    wait_until,
)
from rpl_perception.backends.tensorrt_build import tensorrt_available
from rpl_perception.ros.stats import ERROR, OK, WARN
from rpl_perception.topics import check_topics, output_topics, sibling_topic

NETWORK = (256, 128)
CAM_A, CAM_B = "/cam_a/image_raw", "/cam_b/image_raw/compressed"


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


# -- ROS graph fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph(ros_env):
    """The node under test (two cameras, one raw, one compressed) and a probe, spun in a thread."""
    with node_in_process([CAM_A, CAM_B], backend="torch", network_width=NETWORK[0],
                         network_height=NETWORK[1]) as (node, probe):
        for camera in node.cameras:  # discovery: every output has the probe as a subscriber
            wait_until(lambda: all(p.get_subscription_count() for p in camera.publishers.values()),
                       f"the probe to subscribe to the outputs of {camera.topic}")
        for publisher in probe.publishers.values():
            wait_until(lambda: publisher.get_subscription_count(), "the node to subscribe to the inputs")
        for camera in node.cameras:  # best effort from start-up, then reliable to match the probe's publishers
            wait_until(lambda: camera.reliability == "reliable", f"a reliable subscription to {camera.topic}")
        for publisher in probe.publishers.values():
            wait_until(lambda: publisher.get_subscription_count(), "the node to subscribe to the inputs again")
        yield node, probe


@pytest.fixture(scope="module")
def reference():
    from rpl_perception import AnomalySegmenter

    return AnomalySegmenter.from_pretrained(network_size=NETWORK)


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
    name = f"/rpl_anomaly: {CAM_A}"
    status = wait_until(lambda: (s := probe.status(name)) and dict((kv.key, kv.value) for kv in s.values)
                        ["rejected messages"] == "6" and s, "diagnostics counting 6 rejections")
    values = {kv.key: kv.value for kv in status.values}
    assert "exceeds the largest accepted side" in values["last rejection"]
    # camera B reports on its own once-a-second cycle: wait for a status that includes its rejection
    name_b = f"/rpl_anomaly: {CAM_B}"
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
    assert names == [f"/rpl_anomaly: {CAM_A}", f"/rpl_anomaly: {CAM_B}", "/rpl_anomaly: model"]
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
    assert model["min output rate [Hz]"] == "0.5" and model["output timeout [s]"] == "5"  # the CPU defaults


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


# -- input QoS, remapping, QoS overrides, unique diagnostics --------------------------------------------

def test_input_qos_follows_what_the_publishers_offer(graph):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    node, probe = graph
    camera = node.cameras[0]
    assert camera.reliability == "reliable"  # the probe's publisher is reliable: the node asks for repairs
    sensor_camera = probe.node.create_publisher(Image, CAM_A, qos_profile_sensor_data)
    try:  # a best-effort camera joins: a reliable subscription would not match it
        wait_until(lambda: camera.reliability == "best_effort", "the node to match a best-effort camera")
        wait_until(lambda: sensor_camera.get_subscription_count() == 1, "the best-effort camera to match")
        msg = image_msg(sample_rgb(), "rgb8")
        msg.header.stamp = probe.node.get_clock().now().to_msg()
        sensor_camera.publish(msg)
        probe.outputs(CAM_A, msg.header, ["anomaly"])
    finally:
        probe.node.destroy_publisher(sensor_camera)
    wait_until(lambda: camera.reliability == "reliable", "the node to go back to reliable")
    wait_until(lambda: probe.publishers[CAM_A].get_subscription_count(), "the reliable probe to match again")


def test_the_input_subscription_exists_before_any_camera_and_adapts_to_it(ros_env):
    """``ros2 topic info -v /unwired/image_raw`` (rclpy's get_subscriptions_info_by_topic) shows the node's
    best-effort subscription before a camera runs; a reliable camera then gets a reliable subscription."""
    from rclpy.parameter import Parameter
    from rclpy.qos import ReliabilityPolicy

    from rpl_perception.ros.node import AnomalyNode

    topic = "/unwired/image_raw"
    spinner = Spinner()
    node = AnomalyNode(context=spinner.context, parameter_overrides=[
        Parameter("image_topics", value=[topic]), Parameter("backend", value="torch"),
        Parameter("network_width", value=NETWORK[0]), Parameter("network_height", value=NETWORK[1])])
    from rclpy.node import Node

    observer = Node("wiring_observer", context=spinner.context)  # publishes nothing on the topic
    spinner.spin(node, observer)

    def subscriptions():
        return [(i.node_name, i.topic_type, i.qos_profile.reliability)
                for i in observer.get_subscriptions_info_by_topic(topic)]

    try:
        assert wait_until(subscriptions, "the node's subscription in the graph") == [
            ("rpl_anomaly", "sensor_msgs/msg/Image", ReliabilityPolicy.BEST_EFFORT)]
        assert observer.get_publishers_info_by_topic(topic) == []
        probe = Probe(spinner.context, [topic], name="wiring_probe")  # rclpy's default QoS: reliable
        wait_until(lambda: subscriptions() == [("rpl_anomaly", "sensor_msgs/msg/Image", ReliabilityPolicy.RELIABLE)],
                   "the node to subscribe reliable to its reliable camera")
        spinner.executor.add_node(probe.node)
        header = probe.publish(topic, image_msg(sample_rgb(), "rgb8"))
        probe.outputs(topic, header, ["anomaly"])
    finally:
        spinner.close(node, observer)


def test_a_camera_nobody_reads_is_idle_and_each_output_is_made_only_for_its_readers(ros_env):
    """No subscriber to any output: frames are counted as unread, never decoded or inferred, and the
    status says idle (OK). One subscriber to ``anomaly``: only ``anomaly`` is converted and published."""
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from rpl_perception.ros.node import AnomalyNode
    from rpl_perception.ros.stats import IDLE_MESSAGE

    topic = "/idle/image_raw"
    spinner = Spinner(threads=2)
    from rclpy.parameter import Parameter

    node = AnomalyNode(context=spinner.context, parameter_overrides=[
        Parameter("image_topics", value=[topic]), Parameter("backend", value="torch"),
        Parameter("network_width", value=NETWORK[0]), Parameter("network_height", value=NETWORK[1])])
    camera = node.cameras[0]
    sent = {name: 0 for name in camera.publishers}
    for name, publisher in camera.publishers.items():
        def counting(msg, name=name, publish=publisher.publish):
            sent[name] += 1
            publish(msg)
        publisher.publish = counting
    viewer = Node("idle_viewer", context=spinner.context)
    camera_publisher = viewer.create_publisher(Image, topic, 10)
    spinner.spin(node, viewer)
    try:
        wait_until(lambda: camera_publisher.get_subscription_count(), "the node to subscribe")
        for _ in range(3):
            camera_publisher.publish(image_msg(sample_rgb(), "rgb8"))
            time.sleep(0.1)
        wait_until(lambda: camera.stats.total.unread == 3, "three unread frames")
        assert (camera.stats.total.received, camera.stats.total.published, camera.stats.total.dropped) == (3, 0, 0)
        report = camera.stats.report(time.monotonic(), idle=True)
        assert (report.level, report.message) == (OK, IDLE_MESSAGE)
        anomaly = []
        viewer.create_subscription(Image, sibling_topic(topic, "anomaly"), anomaly.append, 10)
        wait_until(lambda: camera.publishers["anomaly"].get_subscription_count(), "the anomaly reader")
        camera_publisher.publish(image_msg(sample_rgb(), "rgb8"))
        wait_until(lambda: anomaly, "the anomaly map")
        assert camera.stats.total.published == 1
        assert sent == {"semantic": 0, "anomaly": 1, "anomaly_mask": 0, "semantic_color": 0, "overlay": 0}
    finally:
        spinner.close(node, viewer)


@pytest.fixture(scope="module")
def remapped(ros_env):
    """A second node, in namespace /robot, its input remapped from /cam to /other on the command line,
    per-topic QoS overrides for its input and one output."""
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import AnomalyNode

    spinner = Spinner(threads=2)
    node = AnomalyNode(context=spinner.context, namespace="/robot", cli_args=[
        "--ros-args", "-r", "/cam/image_raw:=/other/image_raw",
        "-p", "qos_overrides./other/image_raw.subscription.reliability:=reliable",
        "-p", "qos_overrides./other/image_raw.subscription.depth:=2",
        "-p", "qos_overrides./other/anomaly.publisher.reliability:=best_effort"],
        parameter_overrides=[Parameter("image_topics", value=["/cam/image_raw"]),
                             Parameter("backend", value="torch"), Parameter("network_width", value=NETWORK[0]),
                             Parameter("network_height", value=NETWORK[1])])
    probe = Probe(spinner.context, ["/other/image_raw"], name="remap_probe")
    spinner.spin(node, probe.node)
    wait_until(lambda: probe.publishers["/other/image_raw"].get_subscription_count(), "the remapped input")
    yield node, probe
    spinner.close(node, probe.node)


def test_outputs_follow_the_remapped_input(remapped):
    node, probe = remapped
    camera = node.cameras[0]
    assert camera.topic == "/other/image_raw"
    assert {p.topic_name for p in camera.publishers.values()} == set(output_topics("/other/image_raw").values())
    wait_until(lambda: all(p.get_subscription_count() for name, p in camera.publishers.items()
                           if name != "anomaly"), "the probe to subscribe to the remapped outputs")
    header = probe.publish("/other/image_raw", image_msg(sample_rgb(), "rgb8"))
    out = probe.outputs("/other/image_raw", header, ["semantic", "anomaly_mask"])
    assert out["semantic"].header.stamp == header.stamp


def test_qos_overrides_set_the_input_and_output_qos(remapped):
    from rclpy.qos import ReliabilityPolicy

    node, _ = remapped
    camera = node.cameras[0]
    assert camera.subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert camera.subscription.qos_profile.depth == 2
    assert camera.fixed == ReliabilityPolicy.RELIABLE  # an override is not adapted to the publishers
    assert camera.publishers["anomaly"].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert camera.publishers["semantic"].qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert node.get_parameter("qos_overrides./other/image_raw.subscription.reliability").value == "reliable"


def test_diagnostics_names_are_unique_per_node(graph, remapped):
    _, probe = remapped
    expected = {"/robot/rpl_anomaly: /other/image_raw", "/robot/rpl_anomaly: model", "/rpl_anomaly: model",
                f"/rpl_anomaly: {CAM_A}"}
    wait_until(lambda: expected <= {s.name for a in list(probe.diagnostics) for s in a.status},
               f"diagnostics of both nodes: {expected}")


# -- run-time parameters -------------------------------------------------------------------------------

def test_threshold_and_alpha_can_be_tuned_while_running(graph):
    from rclpy.parameter import Parameter

    node, probe = graph
    own = node.segmenter.anomaly_threshold
    try:
        assert node.set_parameters([Parameter("anomaly_threshold", value=1e9)])[0].successful
        assert node.threshold == 1e9
        header = probe.publish(CAM_A, image_msg(sample_rgb(), "rgb8"))
        assert as_array(probe.outputs(CAM_A, header, ["anomaly_mask"])["anomaly_mask"]).max() == 0
        refused = node.set_parameters([Parameter("anomaly_threshold", value=math.inf)])[0]
        assert not refused.successful and "not finite" in refused.reason and node.threshold == 1e9
        refused = node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0]
        assert not refused.successful and node.overlay_alpha == 0.5
        assert node.set_parameters([Parameter("overlay_alpha", value=0.2)])[0].successful
        assert node.overlay_alpha == 0.2
        refused = node.set_parameters([Parameter("model", value="other.safetensors")])[0]
        assert not refused.successful and "read-only" in refused.reason
        assert node.set_parameters([Parameter("anomaly_threshold", value=math.nan)])[0].successful
        assert node.threshold == own  # .nan: the model's own again
    finally:
        node.set_parameters([Parameter("anomaly_threshold", value=math.nan), Parameter("overlay_alpha", value=0.5)])


def test_an_integer_for_a_double_parameter_is_that_number(graph):
    """``ros2 param set /rpl_anomaly anomaly_threshold -3`` sends an INTEGER through the node's
    set_parameters service (rclpy refused it: "expected '3' got '2'")."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    node, probe = graph
    client = probe.node.create_client(SetParameters, "/rpl_anomaly/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=10)
        request = SetParameters.Request(parameters=[ParameterMsg(name="anomaly_threshold", value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=-3))])
        future = client.call_async(request)
        wait_until(future.done, "the set_parameters reply")
        assert [r.successful for r in future.result().results] == [True], future.result().results
        assert node.threshold == -3.0
        assert node.get_parameter("anomaly_threshold").value == -3.0
        assert node.get_parameter("anomaly_threshold").type_.name == "DOUBLE"
    finally:
        node.set_parameters([Parameter("anomaly_threshold", value=math.nan)])
        probe.node.destroy_client(client)


def test_an_integer_for_a_double_parameter_on_the_command_line_is_that_number(ros_env):
    import rclpy
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import AnomalyNode

    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "-p", "anomaly_threshold:=-3", "-p", "overlay_alpha:=1"])
    try:
        node = AnomalyNode(context=context, parameter_overrides=[
            Parameter("image_topics", value=["/int_param/image_raw"]), Parameter("backend", value="torch"),
            Parameter("network_width", value=NETWORK[0]), Parameter("network_height", value=NETWORK[1])])
        assert (node.threshold, node.overlay_alpha) == (-3.0, 1.0)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


# -- hostile input ------------------------------------------------------------------------------------

def test_frames_replaced_during_inference_are_never_deserialised(graph, monkeypatch):
    import rpl_perception.ros.node as node_module

    node, probe = graph
    deserialised = []
    real_deserialise = node_module.deserialize_message
    monkeypatch.setattr(node_module, "deserialize_message",
                        lambda raw, kind: deserialised.append(len(raw)) or real_deserialise(raw, kind))
    stats = node.cameras[0].stats
    with blocked_inference(node.segmenter) as (entered, release):
        probe.publish(CAM_A, image_msg(sample_rgb(), "rgb8"))
        assert entered.wait(10)
        before = vars(stats.total).copy()
        deserialised.clear()
        headers = [probe.publish(CAM_A, image_msg(sample_rgb(), "rgb8")) for _ in range(20)]
        wait_until(lambda: stats.total.received - before["received"] == 20, "20 frames received")
    probe.outputs(CAM_A, headers[-1], ["anomaly"])
    assert len(deserialised) == 1, "frames replaced by newer ones were deserialised"
    assert stats.total.dropped - before["dropped"] == 19


def test_a_slow_decode_on_one_camera_does_not_stall_the_others(graph, monkeypatch):
    import rpl_perception.ros.node as node_module

    node, probe = graph
    started = threading.Event()
    real_decode = node_module.compressed_to_rgb

    def slow_decode(msg, max_pixels):
        started.set()
        time.sleep(3.0)
        return real_decode(msg, max_pixels)

    monkeypatch.setattr(node_module, "compressed_to_rgb", slow_decode)
    rgb = sample_rgb()
    header_b = probe.publish(CAM_B, png_msg(rgb))
    assert started.wait(10), "camera B's frame never reached its decoder"
    start = time.monotonic()
    header_a = probe.publish(CAM_A, image_msg(rgb, "rgb8"))
    probe.outputs(CAM_A, header_a, ["anomaly"])
    assert time.monotonic() - start < 2.0, "camera A waited for camera B's decoding"
    probe.outputs(CAM_B, header_b, ["anomaly"])  # and B is served once decoded


def png_declaring(width, height):
    """A valid all-black gray PNG of width × height: a few hundred kB that decode to width × height × 3 bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_compressed_frame_declaring_too_many_pixels_is_refused_before_decoding(graph):
    from sensor_msgs.msg import CompressedImage

    node, probe = graph
    bomb = CompressedImage(format="png")
    bomb.data = png_declaring(12000, 12000)  # 144 MP: 0.4 GB once decoded
    assert len(bomb.data) < 1_000_000
    stats = node.cameras[1].stats
    rejected = stats.total.rejected
    start = time.monotonic()
    probe.publish(CAM_B, bomb)
    wait_until(lambda: stats.total.rejected == rejected + 1, "the node to refuse the frame")
    assert time.monotonic() - start < 2.0
    name = f"/rpl_anomaly: {CAM_B}"
    wait_until(lambda: "12000×12000" in probe.values(name).get("last rejection", ""),
               "diagnostics naming the refused size")
    assert "exceeds max_image_pixels 16777216" in probe.values(name)["last rejection"]
    header = probe.publish(CAM_B, png_msg(sample_rgb()))
    probe.outputs(CAM_B, header, ["anomaly"])


def test_distinct_problems_are_each_logged(graph, monkeypatch):
    from sensor_msgs.msg import CompressedImage

    node, probe = graph
    lines = []

    class Logger:
        def error(self, text):
            lines.append(text)

        info = warning = error

    monkeypatch.setattr(node, "get_logger", lambda: Logger())
    stats = node.cameras[1].stats
    depth_map = CompressedImage(format="16UC1; compressedDepth png")
    depth_map.data = b"\x00" * 16
    empty = CompressedImage(format="jpeg")
    for msg in (depth_map, empty, depth_map):
        rejected = stats.total.rejected
        probe.publish(CAM_B, msg)
        wait_until(lambda: stats.total.rejected == rejected + 1, "the rejection")
    assert len(lines) == 2, lines  # two distinct problems, the repeat held back
    assert "is a depth map" in lines[0] and "has no data" in lines[1]


def test_latency_from_a_foreign_clock_is_flagged_not_reported(graph):
    from builtin_interfaces.msg import Time

    node, probe = graph
    header = probe.publish(CAM_A, image_msg(sample_rgb(), "rgb8"), stamp=Time(sec=1000, nanosec=0))
    probe.outputs(CAM_A, header, ["anomaly"])
    name = f"/rpl_anomaly: {CAM_A}"
    wait_until(lambda: probe.values(name).get("foreign-clock stamps", "0") != "0", "the stamp flagged")
    status = wait_until(lambda: (s := probe.status(name)) and "off this node's clock" in s.message and s,
                        "a warning about the clock")
    assert status.level == bytes([WARN])


def test_shutdown_is_bounded_with_a_frame_in_flight_and_silent_after(ros_env):
    import rclpy
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import SHUTDOWN_WAIT_S, AnomalyNode

    topic = "/halt/image_raw"
    spinner = Spinner(threads=2)
    node = AnomalyNode(context=spinner.context, parameter_overrides=[
        Parameter("image_topics", value=[topic]), Parameter("backend", value="torch"),
        Parameter("network_width", value=NETWORK[0]), Parameter("network_height", value=NETWORK[1])])
    probe = Probe(spinner.context, [topic], name="halt_probe")
    spinner.spin(node, probe.node)
    lines = []
    try:
        with blocked_inference(node.segmenter) as (entered, release):
            wait_until(lambda: probe.publishers[topic].get_subscription_count(), "the node to subscribe")
            probe.wait_for_reliable_subscription(topic)
            probe.publish(topic, image_msg(sample_rgb(), "rgb8"))
            assert entered.wait(15), "the frame never reached inference"
            stats = node.cameras[0].stats
            node.get_logger = lambda: type("Logger", (), {"error": lines.append, "info": lines.append,
                                                          "warning": lines.append})()
            rclpy.try_shutdown(context=spinner.context)  # as rclpy's SIGINT handler does, first
            destroyer = threading.Thread(target=node.destroy_node)
            start = time.monotonic()
            destroyer.start()
            destroyer.join(timeout=10)
            took = time.monotonic() - start
            assert not destroyer.is_alive() and took <= 2.0, f"destroy_node took {took:.1f} s"
            assert took >= SHUTDOWN_WAIT_S * 0.9  # it did wait for the batch, within its bound
            assert node.stopped_cleanly is False
            release.set()  # the batch in flight finishes now, after the context is gone
            time.sleep(1.0)
            assert lines == [] and stats.total.failed == 0 and stats.total.published == 0
    finally:
        spinner.executor.shutdown()
        probe.node.destroy_node()


def test_bytes_that_are_no_message_are_rejected_not_failed(graph):
    """Any DDS writer can send bytes under the type's name; the node deserialises them itself."""
    node, probe = graph
    stats = node.cameras[0].stats
    before = vars(stats.total).copy()
    probe.publishers[CAM_A].publish(b"\x00\x01\x00\x00" + b"\xff" * 40)  # CDR header, then garbage
    wait_until(lambda: stats.total.rejected == before["rejected"] + 1, "the rejection")
    assert stats.total.failed == before["failed"]
    wait_until(lambda: "bytes are not a Image message" in probe.values(f"/rpl_anomaly: {CAM_A}").get(
        "last rejection", ""), "diagnostics naming the problem")
    header = probe.publish(CAM_A, image_msg(sample_rgb(), "rgb8"))
    probe.outputs(CAM_A, header, ["anomaly"])
