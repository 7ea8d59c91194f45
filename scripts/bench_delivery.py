#!/usr/bin/env python3
"""How many camera frames from another process reach the node: frame size × camera QoS × Fast DDS profile.

A camera stand-in (``scripts/fake_camera.py``, its own process, configured by the environment as a
real driver is) publishes ``--frames`` rgb8 frames at ``--rate`` Hz to ``anomaly_node`` started as
the README says (``ros2 launch rpl_perception anomaly.launch.py image_topics:=[...]``, default
parameters; ``anomaly_node`` where the launch tools are missing). Each frame ends in one count of the
node's diagnostics, so DDS loss and the node's own newest-frame policy are told apart:

* received  — the node's subscription got the frame (diagnostics "received frames");
* DDS lost  — Fast DDS reported the frame lost (message-lost events, "DDS lost frames");
* missing   — published − received − DDS lost: lost without an event (e.g. at discovery);
* stamp gaps — the node's estimate of frames missing between the header stamps it received
  ("frames missing between header stamps": how it sees reliable-mode losses, which raise no event);
* replaced  — received, then replaced by a newer frame before inference (by design, "dropped frames");
* inferred  — received and published by the node ("published frames");
* BE out    — the node's ``anomaly`` outputs (32FC1, 4 bytes per pixel) that reached a best-effort
  subscriber in this process, out of those the node published.

``--listener`` adds rows with a plain rclpy subscriber in place of the node: DDS alone, no inference
competing for the CPU.

    python scripts/bench_delivery.py --sizes 640x480 1024x512 1280x720 1920x1080 --frames 300

Prints a table; needs rclpy (pip install -e '.[ros]').
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
TOPIC = "/bench/image_raw"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["640x480", "1024x512", "1280x720", "1920x1080"])
    p.add_argument("--qos", nargs="+", default=["best_effort", "reliable"], help="the camera's reliability")
    p.add_argument("--profiles", nargs="+", default=["none", "shipped"],
                   help="the camera process's Fast DDS profile: none (stock) or shipped (config/fastdds.xml)")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--node-qos", default="auto", help="the node's qos_reliability parameter")
    p.add_argument("--listener", action="store_true", help="also measure a plain subscriber (DDS alone)")
    p.add_argument("--node-env", nargs="+", default=[], metavar="NAME=VALUE",
                   help="environment of the node's process only, e.g. FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
                        "(a reader-side DDS setting; the camera keeps stock Fast DDS)")
    return p.parse_args(argv)


def listener_main(seconds: float) -> int:
    """--role listener: count frames and message-lost events on TOPIC, best effort, then print JSON."""
    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_listener")
    counts = {"received": 0, "lost": 0}

    def on_lost(info):
        counts["lost"] += info.total_count_change

    node.create_subscription(Image, TOPIC, lambda raw: counts.__setitem__("received", counts["received"] + 1),
                             qos_profile_sensor_data, raw=True,
                             event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(counts), flush=True)
    rclpy.try_shutdown()
    return 0


class NodeWatcher:
    """This process's view of the node: its diagnostics totals and its anomaly output (best effort)."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from rpl_perception.topics import sibling_topic

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_delivery", context=self.context)
        self.lock = threading.Lock()
        self.values, self.outputs = {}, 0

        def on_diagnostics(msg):
            for status in msg.status:
                if status.name.endswith(f": {TOPIC}"):
                    with self.lock:
                        self.values = {kv.key: kv.value for kv in status.values}

        def on_output(_raw):
            with self.lock:
                self.outputs += 1

        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        self.node.create_subscription(Image, sibling_topic(TOPIC, "anomaly"), on_output,
                                      qos_profile_sensor_data, raw=True)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def totals(self):
        with self.lock:
            values = dict(self.values)
            outputs = self.outputs
        keys = {"received": "received frames", "lost": "DDS lost frames", "replaced": "dropped frames",
                "inferred": "published frames", "rejected": "rejected messages",
                "gaps": "frames missing between header stamps"}
        counts = {name: int(values.get(key, 0)) for name, key in keys.items()}
        counts["be_outputs"] = outputs
        counts["reliability"] = values.get("input reliability", "?")
        return counts

    def close(self):
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_node(env, log, node_qos):
    """The README's way (ros2 launch) where the launch tools are installed, else the executable."""
    bindir = Path(sys.executable).parent
    ros2 = shutil.which("ros2", path=f"{bindir}{os.pathsep}{env['PATH']}")
    args = [f"image_topics:=[{TOPIC}]"]
    if ros2 and node_qos == "auto":
        return subprocess.Popen([ros2, "launch", "rpl_perception", "anomaly.launch.py", *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), "ros2 launch"
    node = shutil.which("anomaly_node", path=f"{bindir}{os.pathsep}{env['PATH']}")
    return subprocess.Popen([node, "--ros-args", "-p", f"image_topics:=[{TOPIC}]",
                             "-p", f"qos_reliability:={node_qos}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), "anomaly_node"


def run_camera(env, size, qos, profile, frames, rate):
    camera_env = dict(env)
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS",
                 "RMW_FASTRTPS_USE_QOS_FROM_XML"):
        camera_env.pop(name, None)
    if profile == "shipped":
        camera_env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds.xml")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fake_camera.py"), "--topic", TOPIC,
                             "--size", size, "--rate", str(rate), "--frames", str(frames),
                             "--reliability", qos], env=camera_env, capture_output=True, text=True,
                            timeout=120 + 3 * frames / rate)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise RuntimeError(f"fake camera failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--role", "listener"]:  # internal: the plain listener process
        return listener_main(float(argv[2]))
    args = parse_args(argv)
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(100, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               AMENT_PREFIX_PATH=os.environ.get("AMENT_PREFIX_PATH", sys.prefix))
    os.environ.update(env)
    rows = []
    log = tempfile.TemporaryFile("w+")
    node_env = dict(env, **dict(item.split("=", 1) for item in args.node_env))
    node, how = start_node(node_env, log, args.node_qos)
    watcher = NodeWatcher()
    try:
        wait_for_node(node, lambda: bool(watcher.values), log)  # the node's first diagnostics
        for size in args.sizes:
            for qos in args.qos:
                for profile in args.profiles:
                    before = watcher.totals()
                    camera = run_camera(env, size, qos, profile, args.frames, args.rate)
                    time.sleep(2.5)  # the node's next diagnostics
                    after = watcher.totals()
                    delta = {k: after[k] - before[k] for k in before if k != "reliability"}
                    rows.append(("node", size, qos, profile, after["reliability"], camera, delta))
                    print(f"  {size} {qos} {profile}: {delta}", file=sys.stderr, flush=True)
        if args.listener:
            for size in args.sizes:
                for qos in args.qos:
                    for profile in args.profiles:
                        seconds = 8 + 3 + args.frames / args.rate
                        listener = subprocess.Popen(
                            [sys.executable, __file__, "--role", "listener", str(seconds)], env=env,
                            stdout=subprocess.PIPE, text=True)
                        camera = run_camera(env, size, qos, profile, args.frames, args.rate)
                        out, _ = listener.communicate(timeout=seconds + 30)
                        counts = json.loads(out.strip().splitlines()[-1])
                        rows.append(("listener", size, qos, profile, "best_effort", camera,
                                     {"received": counts["received"], "lost": counts["lost"]}))
    finally:
        os.killpg(node.pid, signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
        watcher.close()

    header = ("receiver", "size", "camera QoS", "camera profile", "node input QoS", "published", "at [Hz]", "received",
              "DDS lost", "missing", "stamp gaps", "delivered %", "replaced (policy)", "inferred", "BE out")
    print(f"\nnode started with {how} {' '.join(args.node_env)}; {args.rate:g} Hz; node qos_reliability {args.node_qos}; "
          "CPU shared with other work (2 cores)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for receiver, size, qos, profile, reliability, camera, d in rows:
        published = camera["published"]
        missing = published - d["received"] - d["lost"]
        cells = [receiver, size, qos, profile, reliability, published, camera["rate"], d["received"], d["lost"], missing,
                 d.get("gaps", ""),
                 f"{100 * d['received'] / published:.1f}", d.get("replaced", ""), d.get("inferred", ""),
                 f"{d['be_outputs']}/{d['inferred']}" if "be_outputs" in d else ""]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
