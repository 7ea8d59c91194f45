"""Helpers for tests that talk to the node over real DDS: a probe node, test frames, the node as a process.

Imported by the test modules (pytest puts test/ on sys.path); the session's private DDS domain is the
``ros_env`` fixture of conftest.py.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpl_perception.topics import output_topics

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "rpl_perception" / "samples" / "images" / "animals03_Zebras_in_the_road.jpg"
TIMEOUT = 30.0
ALL_OUTPUTS = ("semantic", "anomaly", "anomaly_mask", "semantic_color", "overlay")


def wait_until(predicate, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_reliable_subscription(node, publisher, timeout=5.0):
    """The node subscribes best effort from start-up and turns reliable (qos_reliability auto) once it
    sees a reliable ``publisher`` of ``node``: frames sent before may be lost (a best-effort reader drops
    what a writer it has not discovered yet sends, and large frames from stock Fast DDS are lost anyway).
    Waits for that, or ``timeout`` for a node whose reliability is fixed otherwise."""
    from rclpy.qos import ReliabilityPolicy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = node.get_subscriptions_info_by_topic(publisher.topic_name)
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos) \
                and publisher.get_subscription_count():
            return
        time.sleep(0.02)


class Probe:
    """A test node: publishes camera frames, records every output by (topic, stamp).

    ``output_qos``: the subscriptions' QoS for the outputs (depth 10, reliable by default).
    """

    def __init__(self, context, cameras, output_qos=10, name="probe", publisher_qos=10):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from sensor_msgs.msg import CompressedImage, Image

        self.node = Node(name, context=context)
        self._lock = threading.Lock()
        self.received = {}
        self.diagnostics = []
        self.publishers = {}
        for camera in cameras:
            kind = CompressedImage if camera.endswith("/compressed") else Image
            self.publishers[camera] = self.node.create_publisher(kind, camera, publisher_qos)
            for topic in output_topics(camera).values():
                self.node.create_subscription(Image, topic, self._keeper(topic), output_qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _keeper(self, topic):
        def keep(msg):
            with self._lock:
                self.received[(topic, msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
        return keep

    def _on_diagnostics(self, msg):
        with self._lock:
            self.diagnostics.append(msg)
            del self.diagnostics[:-50]

    def publish(self, camera, msg, frame_id="camera", stamp=None):
        msg.header.stamp = stamp or self.node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        self.publishers[camera].publish(msg)
        return msg.header

    def outputs(self, camera, header, names=ALL_OUTPUTS, timeout=TIMEOUT):
        """Wait for the outputs of the frame with ``header``; {name: Image}."""
        topics = output_topics(camera)
        keys = {name: (topics[name], header.stamp.sec, header.stamp.nanosec) for name in names}
        with_all = lambda: all(k in self.received for k in keys.values())  # noqa: E731
        stamp = f"{header.stamp.sec}.{header.stamp.nanosec:09d}"
        wait_until(with_all, f"{', '.join(names)} of the frame stamped {stamp}", timeout)
        with self._lock:
            return {name: self.received[key] for name, key in keys.items()}

    def wait_for_reliable_subscription(self, camera, timeout=5.0):
        """See :func:`wait_for_reliable_subscription`."""
        wait_for_reliable_subscription(self.node, self.publishers[camera], timeout)

    def status(self, name):
        with self._lock:
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name == name:
                        return status
        return None

    def values(self, name):
        """The newest diagnostics values of status ``name``; {} before the first."""
        status = self.status(name)
        return {kv.key: kv.value for kv in status.values} if status else {}


class Spinner:
    """A context of its own with nodes spun in a background thread."""

    def __init__(self, threads=1):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = (SingleThreadedExecutor(context=self.context) if threads == 1
                         else MultiThreadedExecutor(num_threads=threads, context=self.context))
        self._thread = None

    def spin(self, *nodes):
        for node in nodes:
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self, *nodes):
        import rclpy

        self.executor.shutdown()
        if self._thread:
            self._thread.join(timeout=10)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)


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
    from rpl_perception.image_codec import image_to_array

    return np.array(image_to_array(msg))


def venv_executable(name: str):
    """``name`` from this Python's bin/ or PATH; skip where it is not installed."""
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[ros]'; the ros2 CLI: a ROS distribution, "
                    "not on PyPI)")
    return path


class Process:
    """A child process whose output goes to a file (a full pipe would stall it), in its own
    process group (``signal_group`` then reaches it and its children, as a terminal's Ctrl-C does)."""

    def __init__(self, command, env):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.popen = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True)

    @property
    def pid(self):
        return self.popen.pid

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, signum):
        os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process {self.popen.args[:3]} still running after {timeout} s:\n"
                                 f"{self.output()[-4000:]}") from None

    def kill(self):
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=10)
        os.unlink(self.log.name)


def interrupt_twice(process, first_to_second=0.5, repeat_every=0.05, give_up=10.0):
    """Ctrl-C, then from ``first_to_second`` s on Ctrl-C again every ``repeat_every`` s until the process
    ends, so that one of them lands in every phase of its stop (ROS shutdown, the interpreter's teardown);
    returns the seconds from the first Ctrl-C to the exit."""
    start = time.monotonic()
    process.signal_group(signal.SIGINT)
    time.sleep(first_to_second)
    while process.alive() and time.monotonic() - start < give_up:
        try:
            process.signal_group(signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(repeat_every)
    process.wait(timeout=30)
    return time.monotonic() - start


@contextmanager
def node_in_process(cameras, **parameters):
    """``AnomalyNode`` serving ``cameras`` with these parameter values and a :class:`Probe`, in a
    context of their own, spun together by two threads; yields (node, probe), then tears both down."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from rpl_perception.ros.node import AnomalyNode

    context = rclpy.Context()
    rclpy.init(context=context)
    values = {"image_topics": list(cameras), **parameters}
    node = AnomalyNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    probe = Probe(context, cameras)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    executor.add_node(probe.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield node, probe
    finally:
        executor.shutdown()
        spinner.join(timeout=10)
        node.destroy_node()
        probe.node.destroy_node()
        rclpy.shutdown(context=context)


@contextmanager
def serving(command, topics, env, name="probe"):
    """The node started by ``command`` (anomaly_node, ros2 launch ...) and a probe publishing to
    ``topics``, once the node subscribes to all of them; yields (process, probe)."""
    process = Process(command, env)
    spinner = Spinner()
    probe = Probe(spinner.context, topics, name=name)
    spinner.spin(probe.node)
    try:
        wait_until(lambda: all(probe.publishers[t].get_subscription_count() for t in topics)
                   or not process.alive(), "the node to subscribe", timeout=120)
        assert process.alive(), process.output()
        for topic in topics:
            probe.wait_for_reliable_subscription(topic)
        yield process, probe
    finally:
        spinner.close(probe.node)
        process.kill()


@contextmanager
def blocked_inference(segmenter, seconds=30.0):
    """``segmenter.predict_batch`` waits (up to ``seconds``) until released; yields (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    predict = segmenter.predict_batch

    def blocked(images):
        entered.set()
        release.wait(seconds)
        return predict(images)

    segmenter.predict_batch = blocked
    try:
        yield entered, release
    finally:
        release.set()
        segmenter.predict_batch = predict
