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

REPO = Path(__file__).resolve().parents[1]
TOPIC = "/huge/image_raw"
OUTPUTS = ("semantic", "anomaly", "anomaly_mask", "semantic_color", "overlay")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--huge", default="4096x4096")
    p.add_argument("--small", type=int, default=10, help="small frames before and after the huge one")
    p.add_argument("--node-args", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    os.environ.update(ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds.xml"))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from rpl_perception.image_codec import fill_image
    from rpl_perception.topics import sibling_topic

    log = tempfile.TemporaryFile("w+")
    node_exe = shutil.which("anomaly_node", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    node_env = {k: v for k, v in os.environ.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}  # its own set-up
    node = subprocess.Popen([node_exe, "--ros-args", "-p", f"image_topics:=[{TOPIC}]", *args.node_args],
                            env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rclpy.init()
    client = rclpy.create_node("huge_frame_client")
    served = set()
    lock = threading.Lock()

    def on_anomaly(msg):
        with lock:
            served.add((msg.header.stamp.sec, msg.header.stamp.nanosec))

    for name in OUTPUTS:
        client.create_subscription(Image, sibling_topic(TOPIC, name),
                                   on_anomaly if name == "anomaly" else (lambda _: None), 2)
    publisher = client.create_publisher(Image, TOPIC, 2)
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rng = np.random.default_rng(0)

    def send(width, height, timeout=300.0):
        msg = fill_image(Image(), rng.integers(0, 255, (height, width, 3), np.uint8), "rgb8")
        msg.header.stamp = client.get_clock().now().to_msg()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        publisher.publish(msg)
        del msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if key in served:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"no anomaly map for the {width}×{height} frame")

    rows = []
    try:
        deadline = time.monotonic() + 180
        while not (publisher.get_subscription_count() and all(client.count_publishers(sibling_topic(TOPIC, n))
                                                               for n in OUTPUTS)):
            if node.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"the node did not start:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        time.sleep(3.0)  # its subscription turns reliable; our readers match its publishers
        rows.append(("started", rss_mib(node.pid)))
        for _ in range(args.small):
            send(640, 480)
        time.sleep(2.0)
        rows.append((f"after {args.small} frames of 640×480", rss_mib(node.pid)))
        width, height = (int(v) for v in args.huge.split("x"))
        send(width, height)
        rows.append((f"after one {width}×{height} frame ({width * height * 3 / 1e6:.0f} MB)", rss_mib(node.pid)))
        time.sleep(3.0)
        rows.append(("3 s later", rss_mib(node.pid)))
        for _ in range(args.small):
            send(640, 480)
        time.sleep(3.0)
        rows.append((f"after {args.small} more frames of 640×480", rss_mib(node.pid)))
    finally:
        os.killpg(node.pid, signal.SIGINT)
        node.wait(timeout=30)
        executor.shutdown(timeout_sec=2)
        spinner.join(timeout=5)  # a spin still running at exit ends the process in C++ terminate
        client.destroy_node()
        rclpy.try_shutdown()
    print(f"\nanomaly_node {' '.join(args.node_args) or '(default parameters)'}; all five outputs subscribed; "
          "machine shared with other work\n")
    print("| step | node RSS [MiB] |")
    print("|---|---|")
    for step, rss in rows:
        print(f"| {step} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
