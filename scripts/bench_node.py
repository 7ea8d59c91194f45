#!/usr/bin/env python3
"""Benchmark the anomaly node as a vehicle runs it: a separate process, real DDS, 1024×512 frames.

1. Overhead: the core's own ``predict`` time on the frame (same backend and settings as the node,
   in this process, before the node starts), then frames sent one at a time to the node, timing
   publish → receipt of ``<prefix>/anomaly``. Overhead = end-to-end − predict (target ≤ 10 %).
2. Overload: ``--frames`` frames published at ``--rate`` Hz while inference takes far longer. The
   node must drop old frames (counted in its diagnostics), keep latency under 2× the inference time
   and keep its resident memory flat.

    python scripts/bench_node.py --frames 1000 --backend torch

Prints a table; needs rclpy and the anomaly_node executable (pip install -e '.[ros]').
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from node_process import wait_for_node
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "rpl_perception" / "samples" / "images" / "animals03_Zebras_in_the_road.jpg"
TOPIC = "/bench/image_raw"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1000, help="frames in the overload phase")
    p.add_argument("--rate", type=float, default=30.0, help="publish rate of the overload phase [Hz]")
    p.add_argument("--latency-frames", type=int, default=20, help="frames sent one at a time (phase 1)")
    p.add_argument("--size", default="1024x512",
                   help="camera frame size WxH (the network runs at the model's size)")
    p.add_argument("--backend", default="torch", help="auto, torch, onnxruntime or tensorrt")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def sample_frame(width, height):
    from rpl_perception.image import read_rgb

    return cv2.resize(read_rgb(SAMPLE), (width, height), interpolation=cv2.INTER_AREA)


def core_segmenter(backend, device):
    """The core with the node's own loading code and settings."""
    from rpl_perception.ros.node import PARAMETERS, Settings, segmenter_from_settings

    values = {spec.name: spec.default for spec in PARAMETERS}
    values.update(image_topics=[TOPIC], backend=backend, device=device)
    return segmenter_from_settings(Settings.from_values(values))


class CorePredict:
    """Times ``segmenter.predict`` in a long-lived worker thread, as the node calls it. (On this
    machine, under load from other processes, PyTorch's OpenMP runs up to 5× slower when called
    from the main thread than from a worker thread: timing it in the main thread would flatter
    the node.)"""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.pool = ThreadPoolExecutor(max_workers=1)

    def _timed(self, rgb) -> float:
        start = time.perf_counter()
        self.segmenter.predict(rgb)
        return time.perf_counter() - start

    def __call__(self, rgb) -> float:
        return self.pool.submit(self._timed, rgb).result()

    def close(self):
        self.pool.shutdown()
        self.segmenter = None


class Client:
    """Publishes frames and times the arrival of their anomaly maps."""

    def __init__(self, rgb):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        from rpl_perception.image_codec import fill_image
        from rpl_perception.topics import sibling_topic

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("bench_client", context=self.context)
        self.frame = fill_image(Image(), rgb, "rgb8")
        self.publisher = self.node.create_publisher(Image, TOPIC, 5)
        self.sent, self.arrived, self.diagnostics = {}, {}, None
        self.inference_ms, self.node_latency_ms = [], []  # per diagnostics period with output
        self.lock = threading.Condition()
        self.node.create_subscription(Image, sibling_topic(TOPIC, "anomaly"), self._on_anomaly, 5)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_anomaly(self, msg):
        now = time.perf_counter()
        with self.lock:
            self.arrived[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
            self.lock.notify_all()

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.endswith(TOPIC):
                values = {kv.key: kv.value for kv in status.values}
                if values["inference [ms]"] != "n/a":  # a period with published frames
                    self.inference_ms.append(float(values["inference [ms]"]))
                    self.node_latency_ms.append(float(values["latency p50 [ms]"]))
                self.diagnostics = values

    def publish(self):
        self.frame.header.stamp = self.node.get_clock().now().to_msg()
        key = (self.frame.header.stamp.sec, self.frame.header.stamp.nanosec)
        self.sent[key] = time.perf_counter()
        self.publisher.publish(self.frame)
        return key

    def wait(self, key, timeout):
        with self.lock:
            return self.lock.wait_for(lambda: key in self.arrived, timeout)

    def latencies(self, keys):
        with self.lock:
            return np.array([self.arrived[k] - self.sent[k] for k in keys if k in self.arrived])

    def close(self):
        import rclpy

        self.executor.shutdown()
        self.spinner.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def ms(seconds):
    return f"{seconds * 1e3:.1f}"


def _start_node(executable: str, args, log):
    return subprocess.Popen([executable, "--ros-args", "-p", f"image_topics:=[{TOPIC}]",
                             "-p", f"backend:={args.backend}", "-p", f"device:={args.device}",
                             "-p", "qos_reliability:=reliable"], stderr=log)


def one_at_a_time(client, core_predict, rgb, frames: int) -> dict:
    """Phase 1, one frame at a time: end-to-end latency against the core's predict time."""
    keys, predict = [], []
    first_period = 0
    for i in tqdm(range(frames + 2), desc="one at a time", unit="frame"):
        if i == 2:  # the first two warm up DDS matching and caches
            first_period = len(client.inference_ms)
        predict.append(core_predict(rgb))
        key = client.publish()
        if not client.wait(key, timeout=120):
            sys.exit("no anomaly map came back within 120 s")
        keys.append(key)
    time.sleep(1.5)  # the last diagnostics period
    sequential = client.latencies(keys[2:])
    inference = float(np.median(predict[2:]))
    # the node's own predict and stamp → published latency, per diagnostics period (about one
    # frame each): the same frames, process and moment as the end-to-end times
    node_predict = np.median(client.inference_ms[first_period:]) / 1e3
    return {"sequential": sequential, "inference": inference,
            "overhead": float(np.median(sequential)) - inference, "node_predict": node_predict,
            "node_latency": np.median(client.node_latency_ms[first_period:]) / 1e3,
            "node_overhead": float(np.median(sequential)) - node_predict,
            "stream_period": len(client.inference_ms)}


def stream(client, node, rate: float, frames: int, inference: float) -> dict:
    """Phase 2, overload: frames at ``rate`` while inference takes far longer."""
    rss_samples = [rss_mib(node.pid)]
    period = 1.0 / rate
    keys = []
    start = time.perf_counter()
    for i in tqdm(range(frames), desc=f"{rate:g} Hz stream", unit="frame"):
        time.sleep(max(0.0, start + i * period - time.perf_counter()))
        keys.append(client.publish())
        if i % 100 == 99:
            rss_samples.append(rss_mib(node.pid))
    stream_seconds = time.perf_counter() - start
    client.wait(keys[-1], timeout=max(10, 5 * inference))
    time.sleep(2.5)  # one more diagnostics period
    return {"rss_samples": rss_samples, "rss_end": rss_mib(node.pid), "seconds": stream_seconds,
            "streamed": client.latencies(keys), "diagnostics": client.diagnostics or {}}


def _stop(node, client, log) -> str:
    node.send_signal(signal.SIGINT)
    try:
        node.wait(timeout=60)
    finally:
        node.kill()
    client.close()
    log.seek(0)
    return log.read()


def table(args, size, backend, single: dict, streamed: dict, stream_predict: float, node, stderr: str):
    width, height = size
    latencies = streamed["streamed"]
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies.size else (np.nan, np.nan)
    rss = streamed["rss_samples"]
    node_predict, node_overhead = single["node_predict"], single["node_overhead"]
    return [
        ("frame / network", f"{width}×{height} rgb8 / model default, {backend}"),
        ("one at a time: end-to-end p50 (publish → anomaly received) [ms]", ms(np.median(single["sequential"]))),
        ("one at a time: end-to-end p95 [ms]", ms(np.percentile(single["sequential"], 95))),
        ("one at a time: the node's own predict p50 (diagnostics) [ms]", ms(node_predict)),
        ("one at a time: stamp → published in the node p50 (diagnostics) [ms]", ms(single["node_latency"])),
        ("overhead vs the node's own predict [ms]", ms(node_overhead)),
        ("overhead vs the node's own predict [%] (target ≤ 10)", f"{100 * node_overhead / node_predict:.1f}"),
        ("cross-check: core predict p50 in the benchmark process [ms]", ms(single["inference"])),
        ("cross-check: overhead vs that [%]", f"{100 * single['overhead'] / single['inference']:.1f}"),
        (f"stream: frames published at {args.rate:g} Hz", f"{args.frames} in {streamed['seconds']:.1f} s"),
        ("stream: anomaly maps received", str(latencies.size)),
        ("stream: frames dropped (node diagnostics, both phases)",
         streamed["diagnostics"].get("dropped frames", "n/a")),
        ("stream: latency p50 [ms]", ms(p50)),
        ("stream: latency p95 [ms]", ms(p95)),
        ("stream: the node's own predict p50 (diagnostics) [ms]", ms(stream_predict)),
        ("stream: latency p95 / predict (target < 2)", f"{p95 / stream_predict:.2f}"),
        ("node RSS start / after 100 frames / end [MiB]",
         f"{rss[0]:.0f} / {rss[min(1, len(rss) - 1)]:.0f} / {streamed['rss_end']:.0f}"),
        ("node RSS max during stream [MiB]", f"{max(rss + [streamed['rss_end']]):.0f}"),
        ("node exit code after SIGINT", f"{node.returncode}" + (" (traceback!)" if "Traceback" in stderr else "")),
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(100, 200))
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    executable = shutil.which("anomaly_node",
                              path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if executable is None:
        sys.exit("anomaly_node is not installed: pip install -e '.[ros]'")
    rgb = sample_frame(width, height)

    segmenter = core_segmenter(args.backend, args.device)
    backend = segmenter.backend.describe()
    core_predict = CorePredict(segmenter)
    for _ in range(2):
        core_predict(rgb)

    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the node
    node = _start_node(executable, args, log)
    client = Client(rgb)
    try:
        wait_for_node(node, lambda: bool(client.publisher.get_subscription_count()), log, timeout_s=120,
                      poll_s=0.05)
        single = one_at_a_time(client, core_predict, rgb, args.latency_frames)
        core_predict.close()  # the stream phase measures the node alone
        del segmenter
        streamed = stream(client, node, args.rate, args.frames, single["inference"])
    finally:
        stderr = _stop(node, client, log)

    stream_predict = np.median(client.inference_ms[single["stream_period"]:]) / 1e3
    rows = table(args, (width, height), backend, single, streamed, stream_predict, node, stderr)
    width_col = max(len(name) for name, _ in rows)
    print(f"\n| {'measure'.ljust(width_col)} | value |\n|{'-' * (width_col + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width_col)} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
