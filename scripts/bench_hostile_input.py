#!/usr/bin/env python3
"""What one hostile or oversized frame costs the node, and the other cameras it serves.

``anomaly_node`` (default parameters, backend torch) serves a victim camera, fed at ``--rate`` Hz by this
process with small rgb8 frames, and a camera that receives, one by one and ``--gap`` seconds apart, the
messages below. Per message the table gives:

* verdict    — how the node took it: the line it logged ("skipped a message: ...") or "served";
* verdict in — seconds from publishing the message to that log line (the node's own timestamp);
* victim gap — the longest pause between two outputs of the victim camera in the ``--gap`` seconds
  after the message (normal: about 1 / rate, or one inference if that is longer);
* RSS        — the node's resident memory after the message, and its growth.

    python scripts/bench_hostile_input.py
    PYTHONPATH=/path/to/old/checkout python scripts/bench_hostile_input.py --cases png20000 jpeg65000

Prints a table; needs rclpy and the anomaly_node executable (pip install -e '.[ros]').
"""

import argparse
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from node_process import wait_for_node

VICTIM, HOSTILE, HOSTILE_RAW = "/victim/image_raw", "/hostile/image_raw/compressed", "/hostile_raw/image_raw"


def png_declaring(width: int, height: int) -> bytes:
    """A valid all-black 8-bit gray PNG: a few hundred kB that decode to width × height × 3 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG cut after its frame header: all a decoder needs to allocate width × height."""
    sof = struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


def photo_png(width: int, height: int) -> bytes:
    """A real-looking frame of that size (noise compresses badly: a costly decode)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return cv2.imencode(".png", cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))[1].tobytes()


#: name → (description, topic, kind, builder)
CASES = {
    "png20000": ("PNG declaring 20000×20000 (0.4 GP)", HOSTILE, "compressed", lambda: png_declaring(20000, 20000)),
    "png30000": ("PNG declaring 30000×30000 (0.9 GP)", HOSTILE, "compressed", lambda: png_declaring(30000, 30000)),
    "png8192": ("PNG 8192×8192 (67 MP) of black", HOSTILE, "compressed", lambda: png_declaring(8192, 8192)),
    "jpeg65000": ("JPEG header declaring 65000×65000, no data", HOSTILE, "compressed",
                  lambda: jpeg_declaring(65000, 65000)),
    "garbage": ("1 MB of random bytes as JPEG", HOSTILE, "compressed",
                lambda: np.random.default_rng(1).integers(0, 256, 1_000_000, dtype=np.uint8).tobytes()),
    "png4096": ("PNG 4096×4096 photo-like (at the default limit)", HOSTILE, "compressed",
                lambda: photo_png(4096, 4096)),
    "raw20000": ("rgb8 Image declaring 20000×20000 with 1 kB of data", HOSTILE_RAW, "raw", None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["png20000", "png30000", "png8192", "jpeg65000", "garbage",
                                                   "raw20000", "png4096"], choices=sorted(CASES))
    p.add_argument("--rate", type=float, default=10.0, help="victim camera frames per second")
    p.add_argument("--gap", type=float, default=6.0, help="seconds between hostile messages (> log throttle)")
    return p.parse_args(argv)


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


class Client:
    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image

        from rpl_perception.topics import sibling_topic

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_hostile", context=self.context)
        self.Image, self.CompressedImage = Image, CompressedImage
        self.victim = self.node.create_publisher(Image, VICTIM, 5)
        self.compressed = self.node.create_publisher(CompressedImage, HOSTILE, 5)
        self.raw = self.node.create_publisher(Image, HOSTILE_RAW, 5)
        self.lock = threading.Lock()
        self.victim_outputs = []  # receipt times
        self.hostile_outputs = {}
        self.node.create_subscription(Image, sibling_topic(VICTIM, "anomaly"), self._on_victim, 5, raw=True)
        for topic in (HOSTILE, HOSTILE_RAW):
            self.node.create_subscription(Image, sibling_topic(topic, "semantic"), self._on_hostile, 5)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_victim(self, _):
        with self.lock:
            self.victim_outputs.append(time.monotonic())

    def _on_hostile(self, msg):
        with self.lock:
            self.hostile_outputs[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.monotonic()

    def ready(self):
        return all(p.get_subscription_count() for p in (self.victim, self.compressed, self.raw))

    def stamp(self, msg):
        msg.header.stamp = self.node.get_clock().now().to_msg()
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    def close(self):
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def victim_stream(client, rate, stop):
    from rpl_perception.image_codec import fill_image

    frame = fill_image(client.Image(), np.full((96, 192, 3), 90, np.uint8), "rgb8")
    while not stop.is_set():
        client.stamp(frame)
        client.victim.publish(frame)
        stop.wait(1.0 / rate)


def verdict_in_log(log_text: str, after: float):
    """The first 'skipped a message' line of a hostile topic logged at or after ``after`` (ROS time)."""
    for match in re.finditer(r"\[(?:ERROR|WARN)\] \[(\d+\.\d+)\] \[rpl_anomaly\]: (/hostile\S*): (.*)", log_text):
        stamp = float(match.group(1))
        if stamp >= after - 0.001:
            return stamp, match.group(3)
    return None, None


def send_hostile(client, name: str, message):
    """Publish case ``name`` → (size in bytes, its stamp in seconds)."""
    description, _, kind, _ = CASES[name]
    if kind == "compressed":
        msg = client.CompressedImage(format="png" if "PNG" in description else "jpeg")
        msg.data = message
        sent = client.stamp(msg)
        client.compressed.publish(msg)
        return len(msg.data), sent
    msg = client.Image(height=20000, width=20000, encoding="rgb8", step=60000)
    msg.data = bytes(1000)
    sent = client.stamp(msg)
    client.raw.publish(msg)
    return 1000, sent


def hostile_row(client, node, log, name: str, message, gap: float, rss_before: float):
    """Send one hostile message, wait ``gap`` seconds, and read what became of it and of the victim
    → (table row, node RSS now)."""
    size, sent = send_hostile(client, name, message)
    t_sent = time.monotonic()
    time.sleep(gap)
    with client.lock:
        times = [t for t in client.victim_outputs if t >= t_sent]
        served = any(abs(s + ns * 1e-9 - sent) < 1e-6 for s, ns in client.hostile_outputs)
    gaps = np.diff([t_sent] + times) if times else np.array([gap])
    log.flush()
    with open(log.name, encoding="utf-8", errors="replace") as f:
        logged_at, verdict = verdict_in_log(f.read(), sent)
    if served:
        verdict = "served"
    rss = rss_mib(node.pid)
    verdict = (verdict or "no verdict").replace("skipped a message: ", "")
    row = (CASES[name][0], f"{size / 1e3:.0f} kB", verdict[:110], f"{logged_at - sent:.3f}" if logged_at else "-",
           f"{gaps.max():.2f}", f"{rss:.0f} ({rss - rss_before:+.0f})", "yes" if node.poll() is None else "NO")
    return row, rss


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.update(ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    executable = shutil.which("anomaly_node", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if executable is None:
        sys.exit("anomaly_node is not installed: pip install -e '.[ros]'")
    messages = {name: CASES[name][3]() if CASES[name][3] else None for name in args.cases}
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    node = subprocess.Popen([executable, "--ros-args", "-p", f"image_topics:=[{VICTIM}, {HOSTILE}, {HOSTILE_RAW}]",
                             "-p", "backend:=torch", "-p", "qos_reliability:=reliable"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = Client()
    stop = threading.Event()
    rows = []
    try:
        wait_for_node(node, client.ready, log, poll_s=0.1)
        threading.Thread(target=victim_stream, args=(client, args.rate, stop), daemon=True).start()
        time.sleep(args.gap)  # settle: first inferences, steady memory
        rss_start = rss_mib(node.pid)
        t_start = time.monotonic()
        time.sleep(args.gap)
        with client.lock:
            times = [t for t in client.victim_outputs if t >= t_start]
        rss_before = rss_mib(node.pid)
        rows.append(("(none: the victim camera alone)", "-", "-", "-",
                     f"{np.diff([t_start] + times).max():.2f}" if times else f"> {args.gap}",
                     f"{rss_before:.0f} ({rss_before - rss_start:+.0f})", "yes"))
        for name in args.cases:
            row, rss_before = hostile_row(client, node, log, name, messages[name], args.gap, rss_before)
            rows.append(row)
            print(f"  {name}: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        stop.set()
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        client.close()
    header = ("message", "size", "verdict", "verdict in [s]", "victim gap [s]", "node RSS [MiB] (Δ)", "node alive")
    print(f"\nvictim camera at {args.rate:g} Hz; node RSS at start {rss_start:.0f} MiB; "
          f"CPU shared with other work (2 cores)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
