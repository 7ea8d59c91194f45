"""Live evaluation: the bag is replayed over DDS at its recorded rate to a running
``anomaly_node`` (rclpy, imported only here); accuracy of what came back, plus the
delivered-frame ratio and the latency a user gets on the vehicle.

Frames go out as the type they were recorded as (:mod:`.replay_message`: a CompressedImage with its
recorded bytes). :func:`evaluate_live`'s ``skipped`` (a :class:`~.bag_reader.SkipLog`) collects
malformed messages instead of failing; its ``observers`` (e.g. the drive's video) see every scored
frame with its latency.
"""

import os
import time
from dataclasses import dataclass, fields
from typing import Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from .evaluation import Evaluation, EvaluationResult, class_count, downscale_preview, latency_summary
from .frames import BagTopics, EvalFrame, check_same_size, frames_from_bag
from .offline import score_settings
from .replay_message import camera_message, camera_message_type_of

#: the longest the replay waits for a node's subscription to turn reliable (qos_reliability auto)
SETTLE_S = 3.0

__all__ = ["NodeOptions", "evaluate_live"]


@dataclass
class NodeOptions:
    """How to start ``anomaly_node`` for a live evaluation: values of the node's own parameters
    (:data:`rpl_perception.ros.parameters.PARAMETERS`), each field named as its parameter, except
    ``network_size`` (``network_width`` and ``network_height``). None or empty: the node's default,
    which for the model settings is the model's own value."""
    model: str = "default"
    score: Optional[str] = None
    network_size: Optional[Tuple[int, int]] = None
    smoothing_sigma: Optional[float] = None
    device: str = "cpu"
    #: the node's input QoS reliability (best_effort or reliable)
    qos_reliability: Optional[str] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    cache_dir: Optional[str] = None

    #: the command-line option of each field whose name differs (see rpl_perception.commands)
    _OPTIONS = {"network_size": "size", "qos_reliability": "node_qos"}

    @classmethod
    def from_args(cls, args) -> "NodeOptions":
        """From a command's options (:func:`rpl_perception.commands.add_model_arguments`, the
        deployment options and ``--node-qos``), which are named as the node's parameters."""
        values = {f.name: getattr(args, cls._OPTIONS.get(f.name, f.name))
                  for f in fields(cls) if hasattr(args, cls._OPTIONS.get(f.name, f.name))}
        if values.get("cache_dir") is not None:
            values["cache_dir"] = str(values["cache_dir"])
        return cls(**values)

    def parameters(self) -> Dict[str, object]:
        """The node parameters these options set, by the node's names."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "network_size"}
        if self.network_size:
            values["network_width"], values["network_height"] = self.network_size
        return {name: value for name, value in values.items() if value is not None and value != ""}

    def command(self, image_topic: str) -> List[str]:
        """The node's command line: this Python, ``--ros-args`` with one ``-p`` per parameter,
        checked against the node's parameter table and written as each one's type."""
        import sys

        from ..ros.parameters import ros_arguments  # the node's own table (ROS-free; imports the scoring)

        return [sys.executable, "-m", "rpl_perception.ros.node",
                *ros_arguments({"image_topics": [image_topic], **self.parameters()})]


class _Received(NamedTuple):
    output: str  # "anomaly" or "semantic"
    stamp_ns: int
    pixels: np.ndarray
    received_s: float  # perf_counter
    received_wall_ns: int


class _LiveSession:
    """A ROS 2 context of our own with the replay publisher and the output subscriptions,
    spun in a background thread; received outputs land in a queue for the main thread."""

    def __init__(self, topics: "BagTopics", domain_id: Optional[int], camera_type):
        import queue
        import threading

        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from ..image_codec import image_to_array
        from .bags import stamp_to_ns

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("rpl_eval_replay", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE)
        # reliable publishes to best-effort and reliable subscribers alike; each frame as its recorded type
        self._camera_type = camera_type
        self.publisher = self.node.create_publisher(self._camera_type, topics.image, reliable)
        self.received: "queue.Queue[_Received]" = queue.Queue()
        self.topics = topics
        self._matched_at: Optional[float] = None

        def on_output(output, msg):
            pixels = image_to_array(msg)
            self.received.put(_Received(output, stamp_to_ns(msg.header.stamp),
                                        pixels.astype(pixels.dtype.newbyteorder("=")),
                                        time.perf_counter(), time.time_ns()))

        # the node computes an output only for its subscribers: these must have matched before frames go out
        self.output_subscriptions = [
            self.node.create_subscription(Image, topic, lambda msg, o=output: on_output(o, msg), reliable)
            for output, topic in (("anomaly", topics.anomaly), ("semantic", topics.semantic_prediction))]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="rpl_eval_spin", daemon=True)
        self._spinner.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def ready(self) -> bool:
        """The node subscribes to our camera topic and its outputs matched our subscriptions. A node on
        ``qos_reliability: auto`` subscribes best effort until it sees our reliable publisher, then
        reliable (within a second): wait for that (up to ``SETTLE_S``), since a best-effort reader loses
        large frames from a process with stock Fast DDS."""
        from rclpy.qos import ReliabilityPolicy

        if not (self.publisher.get_subscription_count() > 0
                and all(s.get_publisher_count() > 0 for s in self.output_subscriptions)):
            self._matched_at = None
            return False
        self._matched_at = self._matched_at or time.monotonic()
        infos = self.node.get_subscriptions_info_by_topic(self.topics.image)
        return (all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in infos)
                or time.monotonic() - self._matched_at > SETTLE_S)

    def publish(self, frame: EvalFrame, frame_id: str) -> None:
        from .bags import ns_to_stamp

        self.publisher.publish(camera_message(self._camera_type, frame, ns_to_stamp(frame.stamp_ns), frame_id))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._spinner.join(timeout=5.0)


class _NodeProcess:
    """``anomaly_node`` as a child process; its log goes to a temporary file shown on failure."""

    def __init__(self, command: List[str], env: dict):
        import subprocess
        import tempfile

        self.log = tempfile.TemporaryFile(mode="w+b")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"anomaly_node exited with status {self.process.returncode} before the "
                               f"evaluation ended; its log:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # the node's clean shutdown path
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def evaluate_live(bag, image_topic: str, *, label_topic: Optional[str] = None, score: str = "node", meta=None,
                  node_options: Optional[NodeOptions] = None, launch: bool = True, timeout_s: float = 10.0,
                  startup_timeout_s: float = 180.0, record=None, rate_scale: float = 1.0, lockstep: bool = False,
                  component_sizes: Optional[Tuple[int, int]] = (500, 100), num_worst: int = 4, skipped=None,
                  domain_id: Optional[int] = None, progress: bool = True, observers=()) -> EvaluationResult:
    """Replay a bag's camera frames over DDS, at the recorded rate and with their original stamps,
    to ``anomaly_node`` (started here unless ``launch`` is False), and score what comes back.

    ``lockstep``: instead of the recorded rate, send each frame once the previous one's outputs
    have come (or timed out): every frame is served whatever the machine's speed, so the metrics
    cover every labelled frame; latency is then the node's unloaded latency.
    Outputs are matched to frames by header stamp; a frame whose ``anomaly`` output has not come
    ``timeout_s`` seconds after it was sent counts as lost (the node keeps only the newest frame,
    so a node slower than the camera drops frames by design: the delivered ratio shows it).
    Latency is receipt of the ``anomaly`` output minus publication of the frame, both on this
    process's monotonic clock. ``record``: a new bag with the sent frames, their ground truth and
    the received outputs (bag time = send / receipt wall time), which ``evaluate_recorded`` reads.
    ``domain_id`` defaults to ``ROS_DOMAIN_ID`` of the environment; a launched node gets the same.
    """
    if not rate_scale > 0:
        raise ValueError(f"rate scale must be > 0; got {rate_scale}")
    if not timeout_s > 0:
        raise ValueError(f"timeout must be > 0 s; got {timeout_s}")
    frames, total = frames_from_bag(bag, image_topic, label_topic, skipped)
    topics = BagTopics.for_camera(image_topic, label_topic)
    env = dict(os.environ)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    elif env.get("ROS_DOMAIN_ID", "").strip():
        domain_id = int(env["ROS_DOMAIN_ID"])
    display, threshold = score_settings(meta, score) if meta is not None else (None, None)
    evaluation = Evaluation([score], thresholds={score: threshold}, component_sizes=component_sizes,
                            num_worst=num_worst, num_classes=class_count(meta), observers=observers)
    process = _NodeProcess((node_options or NodeOptions()).command(image_topic), env) if launch else None
    session = recorder = None
    started = time.perf_counter()
    try:
        session = _LiveSession(topics, domain_id, camera_message_type_of(bag, image_topic))
        _wait_until_ready(session, process, startup_timeout_s, topics.image)
        recorder = _Recorder(record, topics) if record is not None else None
        matcher = _Matcher(session, evaluation, score, timeout_s, recorder)
        pace = _Pacer(matcher, process, lockstep, rate_scale)
        for frame in tqdm(frames, total=total, desc="eval live", unit="frame", disable=not progress):
            pace.until_due(frame)
            if process is not None:
                process.check_alive()
            session.publish(frame, "camera")
            sent_at, sent_wall = time.perf_counter(), time.time_ns()
            if recorder is not None:
                recorder.sent(frame, sent_wall)
            matcher.sent(frame, sent_at)
        matcher.drain()
    finally:
        if recorder is not None:
            recorder.close()
        if session is not None:
            session.close()
        if process is not None:
            process.stop()
    return evaluation.result(
        mode="live", source=str(bag),
        settings={"score": score, "display_range": {score: display}, "threshold": {score: threshold},
                  "topics": vars(topics), "node": vars(node_options or NodeOptions()) if launch else "already running",
                  "rate_scale": None if lockstep else rate_scale, "lockstep": lockstep, "timeout_s": timeout_s},
        delivery=_delivery(matcher.sent_count, matcher.latencies), timing={"wall_s": time.perf_counter() - started})


def _delivery(sent: int, latencies: List[float]) -> Dict[str, object]:
    """The report's delivery section: how many frames came back, and how late."""
    delivered = len(latencies)
    return {"frames_sent": sent, "frames_delivered": delivered, "delivered_ratio": delivered / sent if sent else None,
            "latency": latency_summary(latencies), "latency_clock": "publish → anomaly received"}


class _Recorder:
    """``record``: a bag with the sent frames, their ground truth and the received outputs (bag
    time = send / receipt wall time), which ``evaluate_recorded`` reads."""

    def __init__(self, path, topics: BagTopics):
        from .bags import ImageBagWriter

        self.topics = topics
        self.writer = ImageBagWriter(path).__enter__()

    def sent(self, frame: EvalFrame, wall_ns: int) -> None:
        self.writer.write(self.topics.image, frame.image, frame.stamp_ns, encoding="rgb8", log_time_ns=wall_ns)
        for topic, truth in ((self.topics.label, frame.label), (self.topics.semantic, frame.semantic)):
            if truth is not None:
                self.writer.write(topic, truth, frame.stamp_ns, encoding="mono8", log_time_ns=wall_ns)

    def received(self, item: _Received) -> None:
        anomaly = item.output == "anomaly"
        self.writer.write(self.topics.anomaly if anomaly else self.topics.semantic_prediction, item.pixels,
                          item.stamp_ns, encoding="32FC1" if anomaly else "mono8", log_time_ns=item.received_wall_ns)

    def close(self) -> None:
        self.writer.__exit__(None, None, None)


class _Matcher:
    """Matches the node's outputs to the sent frames by header stamp and scores complete frames; a
    frame whose ``anomaly`` has not come ``timeout_s`` after it was sent counts as lost."""

    def __init__(self, session: _LiveSession, evaluation: Evaluation, score: str, timeout_s: float,
                 recorder: Optional[_Recorder]):
        self.session, self.evaluation, self.score = session, evaluation, score
        self.timeout_s, self.recorder = timeout_s, recorder
        self.pending: Dict[int, Tuple[EvalFrame, float]] = {}  # stamp → (frame with preview image, send time)
        self.outputs: Dict[int, Dict[str, _Received]] = {}
        self.latencies: List[float] = []
        self.sent_count = 0

    def sent(self, frame: EvalFrame, sent_at: float) -> None:
        preview = EvalFrame(frame.name, downscale_preview(frame.image, cv2.INTER_AREA), frame.label, frame.semantic,
                            frame.stamp_ns)
        self.pending[frame.stamp_ns] = (preview, sent_at)
        self.sent_count += 1
        self.settle(time.perf_counter())

    def _take_received(self) -> None:
        while not self.session.received.empty():
            item = self.session.received.get_nowait()
            if item.stamp_ns in self.pending:
                self.outputs.setdefault(item.stamp_ns, {})[item.output] = item
                if self.recorder is not None:
                    self.recorder.received(item)

    def settle(self, now: float, final: bool = False) -> None:
        """Take received outputs; score frames whose outputs are complete, drop expired ones."""
        self._take_received()
        for stamp in list(self.pending):
            got = self.outputs.get(stamp, {})
            frame, sent_at = self.pending[stamp]
            expired = final or now - sent_at > self.timeout_s
            if len(got) == 2 or (expired and "anomaly" in got):
                anomaly = got["anomaly"]
                self.latencies.append(anomaly.received_s - sent_at)
                semantic = got["semantic"].pixels if "semantic" in got else None
                check_same_size(anomaly.pixels, frame.label, stamp)
                self.evaluation.update(frame, {self.score: anomaly.pixels}, semantic, latency_s=self.latencies[-1])
            if len(got) == 2 or expired:
                del self.pending[stamp]
                self.outputs.pop(stamp, None)

    def drain(self) -> None:
        """After the last frame: wait up to ``timeout_s`` for the outstanding outputs."""
        deadline = time.perf_counter() + self.timeout_s
        while self.pending and time.perf_counter() < deadline:
            self.settle(time.perf_counter())
            time.sleep(0.01)
        self.settle(time.perf_counter(), final=True)


class _Pacer:
    """When the next frame goes out: at its recorded time (scaled by ``rate_scale``), or in
    ``lockstep`` once the previous frame's outputs have come (or timed out). Outputs are taken
    while waiting."""

    def __init__(self, matcher: _Matcher, process: Optional[_NodeProcess], lockstep: bool, rate_scale: float):
        self.matcher, self.process, self.lockstep, self.rate_scale = matcher, process, lockstep, rate_scale
        self.first_stamp: Optional[int] = None
        self.first_send = 0.0

    def until_due(self, frame: EvalFrame) -> None:
        if self.first_stamp is None:
            self.first_stamp, self.first_send = frame.stamp_ns, time.perf_counter()
        if self.lockstep:
            while self.matcher.pending:
                if self.process is not None:
                    self.process.check_alive()
                self.matcher.settle(time.perf_counter())
                time.sleep(0.005)
            return
        due = self.first_send + (frame.stamp_ns - self.first_stamp) / 1e9 / self.rate_scale
        while (now := time.perf_counter()) < due:
            self.matcher.settle(now)
            time.sleep(min(0.005, due - now))


def _wait_until_ready(session: _LiveSession, process: Optional[_NodeProcess], timeout_s: float, topic: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not session.ready():
        if process is not None:
            process.check_alive()
        if time.perf_counter() > deadline:
            where = f"; its log:\n{process.tail()}" if process is not None else \
                " (is anomaly_node running with image_topics including it, in this ROS_DOMAIN_ID?)"
            raise TimeoutError(f"no anomaly_node serving {topic} after {timeout_s:.0f} s{where}")
        time.sleep(0.1)
