#!/usr/bin/env python3
"""The node's resident memory before and after one huge frame: does it come back?

Starts ``anomaly_node`` (default parameters plus ``--node-args``), subscribes to all of its outputs for
one camera, sends ``--small`` 640×480 rgb8 frames (the baseline), one ``--huge`` rgb8 frame (4096×4096:
50 MB, the largest the default ``max_image_pixels`` accepts), then small frames again, each time
waiting for the frame's anomaly map, and prints the node's RSS (/proc/<pid>/status) at each step.
This process uses ``config/fastdds.xml`` so that the huge frame crosses processes; the node gets its
default DDS set-up (``RMW_FASTRTPS_USE_QOS_FROM_XML=0`` in the environment: rmw_fastrtps's default
buffers, as before the profile freed them).

    python scripts/bench_huge_frame_memory.py
    python scripts/bench_huge_frame_memory.py --node-args -p backend:=torch

Prints a Markdown table. Needs rclpy (pip install -e '.[ros]') and Linux (/proc).
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
from pathlib import Path

import numpy as np
from node_process import wait_for_node

REPO = Path(__file__).resolve().parents[1]
TOPIC = "/huge/image_raw"
OUTPUTS = ("semantic", "anomaly", "anomaly_mask", "semantic_color", "overlay")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class FrameClient:
    """Publishes frames to the node and waits for each one's anomaly map (every output subscribed)."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from rpl_perception.topics import sibling_topic

        rclpy.init()
        self.client = rclpy.create_node("huge_frame_client")
        self.served, self.lock = set(), threading.Lock()
        for name in OUTPUTS:
            self.client.create_subscription(Image, sibling_topic(TOPIC, name),
                                            self._on_anomaly if name == "anomaly" else (lambda _: None), 2)
        self.publisher = self.client.create_publisher(Image, TOPIC, 2)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.client)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.rng = np.random.default_rng(0)

    def _on_anomaly(self, msg):
        with self.lock:
            self.served.add((msg.header.stamp.sec, msg.header.stamp.nanosec))

    def wired(self) -> bool:
        from rpl_perception.topics import sibling_topic

        return bool(self.publisher.get_subscription_count()) and all(
            self.client.count_publishers(sibling_topic(TOPIC, n)) for n in OUTPUTS)

    def send(self, width, height, timeout=300.0):
        from sensor_msgs.msg import Image

        from rpl_perception.image_codec import fill_image

        msg = fill_image(Image(), self.rng.integers(0, 255, (height, width, 3), np.uint8), "rgb8")
        msg.header.stamp = self.client.get_clock().now().to_msg()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.publisher.publish(msg)
        del msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if key in self.served:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"no anomaly map for the {width}×{height} frame")

    def close(self):
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.spinner.join(timeout=5)  # a spin still running at exit ends the process in C++ terminate
        self.client.destroy_node()
        rclpy.try_shutdown()


def measure(node, frames: FrameClient, log, small: int, huge: str):
    """The node's RSS at each step: started, small frames, one huge frame, small frames again."""
    wait_for_node(node, frames.wired, log)
    time.sleep(3.0)  # its subscription turns reliable; our readers match its publishers
    rows = [("started", rss_mib(node.pid))]
    for _ in range(small):
        frames.send(640, 480)
    time.sleep(2.0)
    rows.append((f"after {small} frames of 640×480", rss_mib(node.pid)))
    width, height = (int(v) for v in huge.split("x"))
    frames.send(width, height)
    rows.append((f"after one {width}×{height} frame ({width * height * 3 / 1e6:.0f} MB)", rss_mib(node.pid)))
    time.sleep(3.0)
    rows.append(("3 s later", rss_mib(node.pid)))
    for _ in range(small):
        frames.send(640, 480)
    time.sleep(3.0)
    rows.append((f"after {small} more frames of 640×480", rss_mib(node.pid)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--huge", default="4096x4096")
    p.add_argument("--small", type=int, default=10, help="small frames before and after the huge one")
    p.add_argument("--node-args", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    os.environ.update(ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds.xml"))
    log = tempfile.TemporaryFile("w+")
    node_exe = shutil.which("anomaly_node", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    node_env = {k: v for k, v in os.environ.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}  # its own set-up
    node = subprocess.Popen([node_exe, "--ros-args", "-p", f"image_topics:=[{TOPIC}]", *args.node_args],
                            env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    frames = FrameClient()
    try:
        rows = measure(node, frames, log, args.small, args.huge)
    finally:
        os.killpg(node.pid, signal.SIGINT)
        node.wait(timeout=30)
        frames.close()
    print(f"\nanomaly_node {' '.join(args.node_args) or '(default parameters)'}; all five outputs subscribed; "
          "machine shared with other work\n")
    print("| step | node RSS [MiB] |")
    print("|---|---|")
    for step, rss in rows:
        print(f"| {step} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
