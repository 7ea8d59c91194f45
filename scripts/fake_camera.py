#!/usr/bin/env python3
"""A camera driver stand-in: publishes rgb8 frames of one size at a fixed rate from its own process.

    FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds.xml python scripts/fake_camera.py \
        --topic /cam/image_raw --size 1920x1080 --rate 30 --frames 900 --reliability best_effort

It waits until a subscriber has matched (and one more second, so that discovery has completed in
both directions), publishes, waits ``--linger`` seconds so that a reliable publisher can repair what
was lost, and prints one JSON line: frames published, the first and last stamps, the achieved rate.
Fast DDS is configured by the environment, exactly as for a real driver.
"""

import argparse
import json
import sys
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topic", default="/cam/image_raw")
    p.add_argument("--size", default="1920x1080", help="WxH")
    p.add_argument("--rate", type=float, default=30.0, help="frames per second")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--reliability", choices=("best_effort", "reliable"), default="best_effort",
                   help="best_effort: the sensor-data QoS camera drivers use (REP 2003)")
    p.add_argument("--depth", type=int, default=5, help="keep-last history depth")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a subscriber")
    p.add_argument("--linger", type=float, default=2.0, help="seconds to stay after the last frame")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from rpl_perception.image_codec import fill_image

    rclpy.init()
    node = rclpy.create_node("fake_camera")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.depth,
                     reliability=getattr(ReliabilityPolicy, args.reliability.upper()))
    publisher = node.create_publisher(Image, args.topic, qos)
    # a gradient, so that a frame is a plausible image and every byte differs from the next row's
    rgb = np.ascontiguousarray(np.broadcast_to(
        np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], (height, width, 3)))
    msg = fill_image(Image(), rgb, "rgb8")
    msg.header.frame_id = "fake_camera"
    deadline = time.monotonic() + args.wait
    while publisher.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print(json.dumps({"published": 0, "error": f"no subscriber on {args.topic} in {args.wait} s"}))
            return 1
        time.sleep(0.05)
    time.sleep(1.0)  # the subscriber's side of discovery
    first = None
    start = time.perf_counter()
    for i in range(args.frames):
        time.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
        msg.header.stamp = node.get_clock().now().to_msg()
        first = first or (msg.header.stamp.sec, msg.header.stamp.nanosec)
        publisher.publish(msg)
    seconds = time.perf_counter() - start
    last = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    time.sleep(args.linger)
    print(json.dumps({"published": args.frames, "seconds": round(seconds, 3),
                      "rate": round(args.frames / seconds, 2) if seconds else None,
                      "first_stamp": first, "last_stamp": last}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
