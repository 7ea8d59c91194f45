"""The node's ROS-free parts: decoder/worker pipeline, per-problem log throttle, counts and the input
diagnosis, the Fast DDS profile set-up. No rclpy needed."""

import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from rpl_perception.ros.dds import FASTDDS_SETTINGS, find_profile, profile_environment
from rpl_perception.ros.health import HealthLimits
from rpl_perception.ros.pipeline import FramePipeline
from rpl_perception.ros.stats import ERROR, IDLE_MESSAGE, OK, WARN, CameraStats, input_problems
from rpl_perception.ros.throttle import ProblemThrottle

REPO = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


class Recorder:
    def __init__(self, decode_delay=None, process_delay=0.0):
        self.decode_delay = decode_delay or {}
        self.process_delay = process_delay
        self.decoded, self.batches, self.replaced, self.errors = [], [], [], []
        self.lock = threading.Lock()

    def decode(self, camera, raw):
        time.sleep(self.decode_delay.get(camera, 0.0))
        if raw == "bad":
            raise RuntimeError("decoder bug")
        with self.lock:
            self.decoded.append((camera, raw))
        return None if raw == "rejected" else f"{raw}:pixels"

    def process(self, frames):
        time.sleep(self.process_delay)
        with self.lock:
            self.batches.append(sorted(frames))

    def pipeline(self, cameras=("a", "b")):
        return FramePipeline(cameras, self.decode, self.process, self.replaced.append,
                             lambda cams, exc: self.errors.append((cams, str(exc))))


def test_a_camera_with_slow_decoding_does_not_stall_the_others():
    recorder = Recorder(decode_delay={"b": 3.0})
    pipeline = recorder.pipeline()
    pipeline.start()
    try:
        pipeline.put("b", "huge")  # 3 s to decode
        time.sleep(0.05)
        start = time.monotonic()
        pipeline.put("a", "a1")
        assert wait_for(lambda: [("a", "a1:pixels")] in recorder.batches, timeout=2.0)
        assert time.monotonic() - start < 1.0, "camera a waited for camera b's decoding"
        assert wait_for(lambda: [("b", "huge:pixels")] in recorder.batches, timeout=5.0)
    finally:
        assert pipeline.stop(timeout=2.0)


def test_frames_replaced_before_use_are_counted_and_never_decoded():
    recorder = Recorder(process_delay=0.5)
    pipeline = recorder.pipeline(("a",))
    pipeline.start()
    try:
        pipeline.put("a", "f0")
        assert wait_for(lambda: recorder.decoded)
        time.sleep(0.1)  # the worker is inside process(f0)
        for i in range(1, 30):  # a 30 Hz camera during a slow inference
            pipeline.put("a", f"f{i}")
        assert wait_for(lambda: len(recorder.batches) == 2, timeout=5)
    finally:
        pipeline.stop(timeout=2.0)
    assert recorder.batches == [[("a", "f0:pixels")], [("a", "f29:pixels")]]  # always the newest
    assert [raw for _, raw in recorder.decoded] == ["f0", "f29"]  # the 28 replaced ones cost nothing
    assert recorder.replaced == ["a"] * 28


def test_errors_are_reported_and_the_threads_keep_running():
    recorder = Recorder()
    pipeline = recorder.pipeline(("a",))
    pipeline.start()
    try:
        pipeline.put("a", "bad")
        assert wait_for(lambda: recorder.errors == [(["a"], "decoder bug")])
        pipeline.put("a", "rejected")  # decode returns None: nothing to process
        pipeline.put("a", "good")
        assert wait_for(lambda: [("a", "good:pixels")] in recorder.batches)
        assert all(batch != [("a", "rejected:pixels")] for batch in recorder.batches)
        assert pipeline.working
    finally:
        pipeline.stop(timeout=2.0)
    assert not pipeline.working


def test_stop_is_bounded_while_a_batch_is_in_flight():
    recorder = Recorder(process_delay=10.0)
    pipeline = recorder.pipeline(("a",))
    pipeline.start()
    pipeline.put("a", "f0")
    assert wait_for(lambda: recorder.decoded)
    time.sleep(0.1)  # the worker is inside process()
    start = time.monotonic()
    assert pipeline.stop(timeout=1.0) is False  # the batch is still running (a daemon thread)
    assert time.monotonic() - start < 1.5
    assert pipeline.stopping.is_set() and not pipeline.working


# -- log throttle ------------------------------------------------------------------------------------

def test_distinct_problems_are_each_logged_and_repeats_held_back():
    throttle = ProblemThrottle(period_s=5.0)
    assert throttle.admit("encoding 'hsv8' is not supported", 0.0) == 0
    assert throttle.admit("data has 1000 bytes, fewer than 2000", 0.1) == 0  # another problem: logged
    assert throttle.admit("data has 998 bytes, fewer than 2000", 0.2) is None  # same problem, numbers differ
    assert throttle.admit("encoding 'hsv8' is not supported", 0.3) is None
    assert throttle.admit("encoding 'hsv8' is not supported", 5.1) == 1  # one held back since
    assert throttle.admit("data has 5 bytes, fewer than 2000", 5.2) == 1


def test_a_stream_of_ever_new_problems_is_bounded():
    throttle = ProblemThrottle(period_s=5.0, max_lines=10, max_kinds=64)
    logged = [throttle.admit(f"encoding 'x{chr(97 + i % 26)}{chr(97 + i // 26)}' is unknown", 0.001 * i)
              for i in range(500)]
    assert sum(line is not None for line in logged) == 10
    assert len(throttle._last) <= 64 and len(throttle._suppressed) <= 64


# -- counts, levels, input diagnosis ---------------------------------------------------------------------

def test_camera_stats_levels_and_values():
    stats = CameraStats(now=0.0)
    report = stats.report(now=1.0)
    assert (report.level, report.message) == (WARN, "no frame received yet")
    for i in range(10):
        stats.on_received(now=1.0 + i * 0.1)
    for latency in (0.1, 0.2, 0.3, 0.4):
        stats.on_published(latency, inference=0.05, batch_size=2, now=1.9)
    for _ in range(6):
        stats.on_dropped()
    report = stats.report(now=2.0)
    values = dict(report.values)
    # replaced frames are the newest-frame policy at work: a value, not a warning
    assert report.level == OK and report.message == "10.0 Hz in, 4.0 Hz out"
    assert values["input rate [Hz]"] == "10.00" and values["output rate [Hz]"] == "4.00"
    assert values["dropped rate [Hz]"] == "6.00" and values["dropped frames"] == "6"
    assert values["latency p50 [ms]"] == "250.0" and values["latency p95 [ms]"] == "385.0"
    assert values["inference [ms]"] == "50.0" and values["batch size"] == "2.00"
    assert values["DDS lost frames"] == "0"
    stats.on_received(now=2.5)
    stats.on_published(0.1, 0.05, 1, now=2.6)
    assert stats.report(now=3.0).level == OK
    stats.on_received(now=3.5)
    stats.on_rejected("encoding 'x' is not supported")
    report = stats.report(now=4.0)
    assert report.level == ERROR
    assert report.message == "1 of 1 messages rejected: encoding 'x' is not supported"
    assert dict(report.values)["rejected messages"] == "1"
    report = stats.report(now=7.0)
    assert report.level == WARN and report.message == ("output 0.20 Hz is below min_output_rate_hz 0.5: the camera "
                                                       "sends 0.4 Hz; no frame for 3.5 s")
    report = stats.report(now=10.0)
    assert (report.level, report.message) == (ERROR, "no output for 7 s (output_timeout_s 5); no frame for 6.5 s")


def serve(stats, start, seconds, input_hz, output_hz):
    """Frames at ``input_hz`` from ``start`` for ``seconds``, ``output_hz`` of them published."""
    for i in range(int(seconds * input_hz)):
        stats.on_received(now=start + i / input_hz)
    for i in range(int(seconds * output_hz)):
        stats.on_published(0.1, 0.05, 1, now=start + i / output_hz)


def test_the_level_follows_the_output_rate_not_the_drops():
    """30 Hz in, 3 Hz out: OK with min_output_rate_hz 0.5 (the CPU default), WARN with 10 (the GPU
    default), naming inference as the cause; a 0.5 Hz camera is named as the cause instead."""
    cpu, gpu = CameraStats(0.0, limits=HealthLimits.for_device(-1, 5.0, on_gpu=False)), \
        CameraStats(0.0, limits=HealthLimits.for_device(-1, 5.0, on_gpu=True))
    assert (cpu.limits.min_output_rate_hz, gpu.limits.min_output_rate_hz) == (0.5, 10.0)
    for stats in (cpu, gpu):
        serve(stats, 0.0, 6.0, input_hz=30, output_hz=3)  # 150 and 15 in (0.99, 5.99]
    assert cpu.report(now=5.99).level == OK
    report = gpu.report(now=5.99)
    assert report.level == WARN
    assert report.message == ("output 3.00 Hz is below min_output_rate_hz 10: inference keeps up with 3.0 of the "
                              "camera's 30.0 Hz")
    slow_camera = CameraStats(0.0)
    serve(slow_camera, 0.0, 6.0, input_hz=0.5, output_hz=0.5)
    report = slow_camera.report(now=6.0)
    assert report.level == WARN and report.message.endswith("the camera sends 0.4 Hz")  # 2 frames in 5 s
    never_judged = CameraStats(0.0, limits=HealthLimits(min_output_rate_hz=0.0))
    serve(never_judged, 0.0, 6.0, input_hz=30, output_hz=0.5)
    assert never_judged.report(now=6.0).level == OK


def test_frames_without_output_are_an_error_after_the_timeout():
    stats = CameraStats(0.0, limits=HealthLimits(output_timeout_s=2.0))
    serve(stats, 0.0, 1.9, input_hz=30, output_hz=0)
    assert stats.report(now=1.9).level == OK  # 1.9 s: not yet
    serve(stats, 1.9, 0.2, input_hz=30, output_hz=0)
    report = stats.report(now=2.1)
    assert (report.level, report.message) == (ERROR, "no output for 2 s (output_timeout_s 2)")


def test_an_idle_camera_is_ok_and_its_timeout_restarts_when_someone_subscribes():
    stats = CameraStats(0.0, limits=HealthLimits(output_timeout_s=2.0))
    report = stats.report(now=10.0, problems=[(WARN, "no publisher on this topic yet")], idle=True)
    assert (report.level, report.message) == (OK, IDLE_MESSAGE)
    assert stats.report(now=11.0).level == WARN  # active from now on: no frame yet, but 1 s < 2 s
    assert stats.report(now=13.0).level == ERROR
    stats.on_lost(5)  # a loss on the way in matters even before anyone reads the outputs
    report = stats.report(now=14.0, idle=True)
    assert report.level == WARN and report.message.startswith(IDLE_MESSAGE + "; DDS lost 5 of 5 frames")


def test_dds_loss_is_counted_apart_from_the_newest_frame_policy():
    stats = CameraStats(now=0.0)
    for i in range(3):
        stats.on_received(now=0.1 * i)
    stats.on_lost(27)
    stats.on_dropped()
    report = stats.report(now=1.0)
    values = dict(report.values)
    assert values["DDS lost frames"] == "27" and values["dropped frames"] == "1"
    assert report.level == WARN
    assert "DDS lost 27 of 30 frames" in report.message and "shared-memory segment" in report.message


def test_stamps_from_a_foreign_clock_are_flagged_not_reported_as_latency():
    stats = CameraStats(now=0.0)
    stats.on_received(now=0.5)
    stats.on_published(96_059_041.8, inference=0.05, batch_size=1)  # stamp from another clock
    stats.on_published(-30.0, inference=0.05, batch_size=1)  # from the future
    stats.on_published(0.08, inference=0.05, batch_size=1)
    report = stats.report(now=1.0)
    values = dict(report.values)
    assert values["latency p50 [ms]"] == "80.0" and values["latency p95 [ms]"] == "80.0"
    assert values["foreign-clock stamps"] == "2"
    assert report.level == WARN and "off this node's clock" in report.message and "-30 s" in report.message


@pytest.mark.parametrize("graph,level,text", [
    (dict(publishers=0, matched=0, received=0, seconds_matched=None), WARN, "no publisher"),
    (dict(publishers=2, matched=0, received=0, seconds_matched=None, offered=["best_effort"]), WARN,
     "none matched: incompatible QoS (they offer best_effort reliability, the node asks for reliable"),
    (dict(publishers=1, matched=1, received=0, seconds_matched=5.0), WARN,
     "matched 5 s ago but no frame arrived: best-effort frames larger than the publisher's Fast DDS"),
    (dict(publishers=1, matched=1, received=0, seconds_matched=1.0), None, ""),
    (dict(publishers=1, matched=1, received=10, seconds_matched=50.0), None, ""),
])
def test_input_problems_name_the_likely_cause(graph, level, text):
    problems = input_problems(reliability="reliable", **graph)
    if level is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0][0] == level and text in problems[0][1]
        stats = CameraStats(now=0.0)
        report = stats.report(now=1.0, problems=problems)
        assert report.level == WARN and text in report.message


# -- the Fast DDS profile ------------------------------------------------------------------------------

def test_the_shipped_profile_sizes_shared_memory_for_full_hd_frames_and_keeps_udp():
    root = ET.parse(REPO / "config" / "fastdds.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    transports = {t.find("d:transport_id", ns).text: t for t in root.iterfind(".//d:transport_descriptor", ns)}
    kinds = {t.find("d:type", ns).text for t in transports.values()}
    assert kinds == {"SHM", "UDPv4"}
    shm = next(t for t in transports.values() if t.find("d:type", ns).text == "SHM")
    segment = int(shm.find("d:segment_size", ns).text)
    assert segment >= 8 * 1920 * 1080 * 3, "room for several 1920×1080 rgb8 frames"
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.find(".//d:useBuiltinTransports", ns).text == "false"
    used = {t.text for t in participant.iterfind(".//d:userTransports/d:transport_id", ns)}
    assert used == set(transports)
    # buffers sized per sample and freed after, not grown for good by one huge frame
    for kind in ("data_writer", "data_reader"):
        endpoint = root.find(f".//d:{kind}", ns)
        assert endpoint.get("is_default_profile") == "true"
        assert endpoint.find("d:historyMemoryPolicy", ns).text == "DYNAMIC"
    assert root.find(".//d:data_writer/d:qos/d:publishMode/d:kind", ns).text == "ASYNCHRONOUS"


def test_the_profile_is_applied_only_where_the_user_configured_nothing(tmp_path):
    profile = tmp_path / "fastdds.xml"
    profile.write_text("<dds/>")
    from_xml = {"RMW_FASTRTPS_USE_QOS_FROM_XML": "1"}  # rmw then takes the history memory policy from it
    assert profile_environment({}, profile) == {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile), **from_xml}
    assert profile_environment({"ROS_DISTRO": "humble"}, profile) == {"FASTRTPS_DEFAULT_PROFILES_FILE": str(profile),
                                                                      **from_xml}
    assert profile_environment({"ROS_DISTRO": "kilted"}, profile) == {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile),
                                                                      **from_xml}
    assert profile_environment({"RMW_FASTRTPS_USE_QOS_FROM_XML": "0"}, profile) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile)}  # the user's choice stays
    for name in FASTDDS_SETTINGS:
        assert profile_environment({name: "x"}, profile) == {}
    assert profile_environment({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, profile) == {}
    assert find_profile() is not None and find_profile().name == "fastdds.xml"


def test_the_cyclone_dds_set_up_asks_for_a_large_socket_receive_buffer():
    root = ET.parse(REPO / "config" / "cyclonedds.xml").getroot()
    buffer = root.find(".//{https://cdds.io/config}SocketReceiveBufferSize")
    assert buffer is not None and buffer.get("min") == "16MB"


# -- frames lost on the way: header-stamp gaps, the terminal line -------------------------------------

def test_header_stamps_are_read_from_the_serialised_frame():
    pytest.importorskip("rclpy", reason="serialises a sensor_msgs/Image")
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from rpl_perception.ros.dds_losses import header_stamp_ns

    for msg in (Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4)), CompressedImage(format="png")):
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 123_456_789
        msg.header.frame_id = "camera"
        assert header_stamp_ns(serialize_message(msg)) == 1_700_000_000_123_456_789
        msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0
        assert header_stamp_ns(serialize_message(msg)) is None
    assert header_stamp_ns(b"\x00\x01") is None


def test_gaps_between_header_stamps_count_the_frames_that_never_came():
    from rpl_perception.ros.dds_losses import StampGaps

    rng = np.random.default_rng(0)
    gaps = StampGaps()
    period = 1e9 / 30
    kept = [i for i in range(300) if i % 3 != 2]  # every third frame of a 30 Hz camera never arrives
    for i in kept:
        gaps.add(int(1e12 + i * period + rng.uniform(-3e6, 3e6)))  # ±3 ms jitter
    assert gaps.period_ns == pytest.approx(period, rel=0.2)
    assert 92 <= gaps.missing <= 99  # 99 missing; about 5 before the period is known (10 intervals)
    before = gaps.missing
    gaps.add(int(1e12 + 310 * period + 5e9))  # a 5 s pause: not losses
    gaps.add(int(1e12))  # back in time (a restart, a bag loop): not counted, starts anew
    gaps.add(None)  # no stamp
    gaps.add(int(1e12 + period))
    assert gaps.missing == before


def test_a_reliable_camera_missing_frames_is_warned_about_and_counted_as_lost():
    stats = CameraStats(now=0.0)
    period = 1e9 / 30
    for i in range(60):
        if i % 2 == 0 or i < 24:  # half of the last 36 frames missing
            stats.on_received(now=i / 30, stamp_ns=int(1e12 + i * period))
    report = stats.report(now=2.0)
    values = dict(report.values)
    assert report.level == WARN and "frames missing between the header stamps received (estimated" in report.message
    assert int(values["frames missing between header stamps"]) == 17 and values["DDS lost frames"] == "0"
    assert stats.loss_totals() == (17, 42)


def test_losses_reach_the_terminal_once_then_every_thirty_seconds_with_the_fix():
    from rpl_perception.ros.dds_losses import LossLog, fix_hint

    hint = fix_hint("rmw_fastrtps_cpp", "/opt/ws/share/rpl_perception/config/fastdds.xml")
    assert hint.startswith("start the camera's process with "
                           "FASTDDS_DEFAULT_PROFILES_FILE=/opt/ws/share/rpl_perception/config/fastdds.xml")
    assert "FASTRTPS_DEFAULT_PROFILES_FILE=" in fix_hint("rmw_fastrtps_cpp", None, "FASTRTPS_DEFAULT_PROFILES_FILE")
    assert "CYCLONEDDS_URI=" in fix_hint("rmw_cyclonedds_cpp", None)
    log = LossLog()
    assert log.line("/cam/image_raw", 0, 10, hint, now=1.0) is None
    assert log.line("/cam/image_raw", 295, 3, hint, now=2.0) == (
        f"/cam/image_raw: 295 frames lost before they reached the node since start (295 of 298 in all, 99 %). "
        f"Fix: {hint}")
    assert log.line("/cam/image_raw", 400, 5, hint, now=20.0) is None  # throttled
    assert log.line("/cam/image_raw", 500, 6, hint, now=32.0).startswith(
        "/cam/image_raw: 205 frames lost before they reached the node in the last 30 s (500 of 506 in all, 99 %)")
    assert log.line("/cam/image_raw", 500, 900, hint, now=70.0) is None  # nothing new
