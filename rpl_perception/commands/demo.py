"""``rpl-perception demo``: the main job end to end on the bundled sample frames.

1. writes a ROS 2 bag (mcap) of the bundled frames — a clip of Udacity highway footage, then
   the sample stills, 8 of them RoadAnomaly scenes with anomaly labels on ``/cam/labels``;
2. starts ``anomaly_node`` on the chosen model (default: the embedded ESPNetv2 + RPL branch) and
   replays the bag through it over DDS, recording the frames, ground truth and the node's outputs
   into a second bag;
3. writes the evaluation report (AP / FPR95 / AUROC and component metrics on the labelled frames,
   delivered frames and latency, PR/ROC plots, overlays of the worst frames) and prints where it is.

The same flow, piecewise, for your own frames or bags: ``rpl-perception bag make``, then
``rpl-perception eval --mode live`` (or ``--mode recorded`` on a bag recorded on the vehicle).
"""

from pathlib import Path

from . import SAMPLES_ROOT, add_model_arguments, anomaly_segmenter_from_args

TOPIC = "/cam/image_raw"
CAMERA_RATE_HZ = 10.0  # the bag's stamps: a 10 Hz camera


def register(subparsers):
    p = subparsers.add_parser("demo", help="bundled frames → bag → anomaly_node over DDS → recorded bag → report",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="folder for bag/, recorded/ and report/ (default: demo; a previous demo's are replaced)")
    p.add_argument("--rate", type=float, default=None,
                   help="replay speed relative to the bag's 10 Hz, as `ros2 bag play --rate`; a node slower "
                        "than that drops frames, and the report counts them (default: lockstep, each frame "
                        "sent once the node has answered the previous one, so every frame is served)")
    p.add_argument("--max-frames", type=int, default=None, help="replay only the first N frames")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for a frame's output before counting it lost (default: 10)")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for the node to come up (default: 180)")
    add_model_arguments(p)
    p.set_defaults(func=run)


def sample_frames(max_frames=None):
    """BagFrames of the bundled samples in replay order (the drive clip, then the stills), and their count."""
    from ..eval.bags import BagFrame
    from ..eval.datasets import ROAD_ANOMALY_LABELS, read_label
    from ..image import read_rgb
    from .predict import collect_images

    files = collect_images([SAMPLES_ROOT / "drive", SAMPLES_ROOT / "images"])[:max_frames]

    def frames():
        for path in files:
            label = SAMPLES_ROOT / "labels" / (path.stem + ".png")
            yield BagFrame(read_rgb(path), read_label(label, ROAD_ANOMALY_LABELS) if label.is_file() else None)

    return frames(), len(files)


def check_dependencies() -> None:
    """Before any work: the node needs rclpy (extra 'ros' or a ROS 2 distribution), the bags and the
    report need rosbags and matplotlib (extra 'eval')."""
    import importlib.util

    missing = [name for name in ("rclpy", "sensor_msgs", "rosbags", "matplotlib")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"the demo needs {', '.join(missing)}, which cannot be imported: install the extras "
                         "(pip install -e '.[ros,eval]'; with a sourced ROS 2 distribution, '.[eval]')")


def run(args) -> int:
    import shutil
    import time

    from tqdm import tqdm

    from ..eval.bags import write_frames
    from ..eval.live import NodeOptions, evaluate_live
    from ..eval.report import write_report
    from .evaluate import print_summary

    check_dependencies()
    segmenter = anomaly_segmenter_from_args(args)  # checks the model options before a node starts
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1; got {args.max_frames}")
    bag, recorded, report = args.out / "bag", args.out / "recorded", args.out / "report"
    for folder in (bag, recorded):  # a previous demo's bags: the bag writer refuses to overwrite
        if folder.exists():
            shutil.rmtree(folder)
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"[1/3] writing {bag} from the bundled sample frames", flush=True)
    frames, total = sample_frames(args.max_frames)
    counts = write_frames(bag, tqdm(frames, total=total, desc="bag make", unit="frame"), image_topic=TOPIC, rate_hz=CAMERA_RATE_HZ, start_ns=round(time.time() * 1e9))
    print("      " + ", ".join(f"{topic}: {count}" for topic, count in counts.items()))

    pace = "in lockstep with the node" if args.rate is None else f"at {args.rate:g}x of {CAMERA_RATE_HZ:g} Hz"
    print(f"[2/3] anomaly_node ({args.model} model, score {segmenter.score}) serving {TOPIC}; replaying {pace} "
          f"and recording into {recorded}", flush=True)
    # reliable: large frames sent best-effort between processes can be lost whole by the DDS
    node = NodeOptions(args.model, args.score, args.size, args.smoothing_sigma, args.device, "reliable")
    result = evaluate_live(bag, TOPIC, score=segmenter.score, meta=segmenter.meta, node_options=node,
                                  timeout_s=args.timeout, startup_timeout_s=args.startup_timeout,
                                  record=recorded, rate_scale=1.0 if args.rate is None else args.rate,
                                  lockstep=args.rate is None)

    print(f"[3/3] writing the report into {report}", flush=True)
    print_summary(result, write_report(result, report))
    return 0
