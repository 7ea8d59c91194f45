#!/usr/bin/env python3
"""The node's CPU time with and without readers of its outputs (no work nobody reads).

Starts ``anomaly_node`` (default parameters, one camera), then for each case runs a camera stand-in
(``scripts/fake_camera.py``, its own process, best effort with ``config/fastdds.xml`` so that every
frame arrives) for ``--seconds`` at ``--rate`` Hz while this process subscribes to none, one or all of
the node's outputs, and reads the node's CPU time (user + system, /proc/<pid>/stat) over the camera's
run. The node's diagnostics give the frames received and inferred.

    python scripts/bench_demand.py --size 640x480 --rate 10 --seconds 10

Prints a Markdown table. Needs rclpy (pip install -e '.[ros]') and Linux (/proc).
"""

import argparse
import json
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

from node_process import wait_for_node

REPO = Path(__file__).resolve().parents[1]
TOPIC = "/demand/image_raw"
CASES = {"no subscriber": (), "anomaly only": ("anomaly",),
         "all outputs": ("semantic", "anomaly", "anomaly_mask", "semantic_color", "overlay")}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Reader:
    """This process's node: subscribes to the node's outputs on demand and keeps its diagnostics."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("demand_reader", context=self.context)
        self.values = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.subscriptions = []
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.endswith(TOPIC):
                self.values = {kv.key: kv.value for kv in status.values}

    def read(self, outputs):
        from sensor_msgs.msg import Image

        from rpl_perception.topics import sibling_topic

        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)
        self.subscriptions = [self.node.create_subscription(Image, sibling_topic(TOPIC, name), lambda _: None, 10)
                              for name in outputs]

    def totals(self):
        return {key: int(self.values.get(key, 0)) for key in ("received frames", "published frames")}

    def close(self):
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.update(env)
    log = tempfile.TemporaryFile("w+")
    node_exe = shutil.which("anomaly_node", path=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    node = subprocess.Popen([node_exe, "--ros-args", "-p", f"image_topics:=[{TOPIC}]"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    reader = Reader()
    camera_env = dict(env, FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds.xml"))
    rows = []
    try:
        wait_for_node(node, lambda: bool(reader.values), log)
        for case, outputs in CASES.items():
            reader.read(outputs)
            time.sleep(2.0)  # discovery of the readers
            before, cpu_before, start = reader.totals(), cpu_seconds(node.pid), time.monotonic()
            frames = int(args.seconds * args.rate)
            result = subprocess.run([sys.executable, str(REPO / "scripts" / "fake_camera.py"), "--topic", TOPIC,
                                     "--size", args.size, "--rate", str(args.rate), "--frames", str(frames),
                                     "--reliability", "best_effort"], env=camera_env, capture_output=True,
                                    text=True, timeout=120 + 3 * args.seconds)
            time.sleep(2.5)  # the last inference and the next diagnostics
            cpu, wall = cpu_seconds(node.pid) - cpu_before, time.monotonic() - start
            after = reader.totals()
            camera = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
            rows.append((case, camera["published"], after["received frames"] - before["received frames"],
                         after["published frames"] - before["published frames"], cpu, wall))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        os.killpg(node.pid, signal.SIGINT)
        node.wait(timeout=30)
        reader.close()
    print(f"\nanomaly_node, default parameters; camera {args.size} rgb8 best effort at {args.rate:g} Hz for "
          f"{args.seconds:g} s; CPU time of the node's process over the camera's run (including its start-up "
          "and a 2.5 s tail); machine shared with other work\n")
    print("| outputs subscribed | frames sent | received | inferred | node CPU [s] | CPU [% of one core] |")
    print("|---|---|---|---|---|---|")
    for case, sent, received, inferred, cpu, wall in rows:
        print(f"| {case} | {sent} | {received} | {inferred} | {cpu:.2f} | {100 * cpu / wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
