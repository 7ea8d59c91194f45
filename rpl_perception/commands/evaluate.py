"""``rpl-perception eval``: anomaly metrics of the model on a bag or a dataset, with a report.

Modes (``--mode``): ``offline`` runs the core on the bag's (or dataset's) frames as fast as it
goes and compares every score the model supports; ``live`` replays the bag over DDS at its recorded
rate through ``anomaly_node`` and also reports the delivered-frame ratio and latency; ``recorded``
scores a bag that already holds the node's outputs. Writes ``report.json``, ``report.md`` and
plots into a fresh ``--out`` and prints the metrics table.

A bag is anything a camera driver records (rosbag2 folder, bare ``.mcap`` / ``.db3``, ROS 1 ``.bag``;
``Image`` or ``CompressedImage``). Every bag run, labelled or not, also writes the drive
(:mod:`rpl_perception.eval.drive`): an overlay video, the most anomalous frames, a timeline and a
per-frame CSV: the same predictions that give the metrics, so the model runs once. Malformed messages
are skipped and named in the report; a damaged bag stops the run before the model loads, with one line.
"""

from pathlib import Path

from . import add_model_arguments, anomaly_segmenter_from_args

MODES = ("offline", "live", "recorded")
DESCRIPTION = ("offline: run the model on the bag's (or dataset's) frames as fast as it goes, comparing every "
               "score the model supports; live: replay the bag over DDS at its recorded rate through "
               "anomaly_node and also report the delivered-frame ratio and latency; recorded: score a bag that "
               "already holds the node's outputs (<ns>/anomaly, <ns>/semantic) next to the ground truth "
               "(<ns>/labels). Writes report.json, report.md and plots into a fresh --out and prints the metrics "
               "table; for a bag, labelled or not, also the drive: overlay.mp4 (heatmap, anomaly contours, stamps), "
               "most_anomalous.png, timeline.png and frames.csv.")


def register(subparsers):
    p = subparsers.add_parser("eval", help="evaluate anomaly scores on a bag or dataset (offline, live, recorded)",
                              description=DESCRIPTION)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bag", type=Path, help="a bag: rosbag2 folder (sqlite3 or mcap, any compression), .mcap, "
                                                 ".db3 or ROS 1 .bag file (see `rpl-perception bag info`)")
    source.add_argument("--dataset", nargs=2, metavar=("KIND", "ROOT"),
                        help="a labelled dataset folder (offline mode only); KIND: auto, road_anomaly, "
                             "fishyscapes_lost_and_found, fishyscapes_static, smiyc_anomaly_track, "
                             "smiyc_obstacle_track, lost_and_found, cityscapes")
    source.add_argument("--suite", type=Path,
                        help="a suite file (YAML list of labelled sets, e.g. scripts/dev_suite.yaml): every set "
                             "offline, one report per set and a summary table (suite.md) with the means over the sets")
    p.add_argument("--mode", choices=MODES, default="offline", help="default: offline")
    p.add_argument("--out", type=Path, required=True, help="report folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    p.add_argument("--topic", default="/cam/image_raw",
                   help="camera topic in the bag, Image or CompressedImage; the leading / is optional "
                        "(default: /cam/image_raw)")
    p.add_argument("--label-topic", default=None,
                   help="anomaly ground-truth topic (default: the sibling 'labels' of --topic)")
    p.add_argument("--scores", default=None, metavar="NAME,...",
                   help="offline: scores to compare (default: every score the model supports)")
    p.add_argument("--batch-size", type=int, default=1, help="offline: frames per network batch")
    p.add_argument("--worst", type=int, default=4, help="worst frames shown in the report")
    p.add_argument("--no-components", action="store_true", help="skip the component metrics (sIoU, PPV, F1)")
    p.add_argument("--no-video", action="store_true", help="leave the overlay video out of the drive")
    p.add_argument("--record", type=Path, default=None,
                   help="offline and live: also write the frames, ground truth and the maps (the node's outputs "
                        "in live mode) to this new bag, which --mode recorded reads")
    p.add_argument("--obstacles", action="store_true",
                   help="offline: also score the node's obstacle outputs: the model score restricted to the drivable "
                        "corridor (score+corridor), with a soft corridor prior (score+corridor_prior), and the "
                        "object output (objects: component metrics of the objects)")
    p.add_argument("--native-size", action="store_true",
                   help="--dataset / --suite: run the network at each set's own image size (rounded up to the "
                        "network's size divisor) instead of the model's input size")
    live = p.add_argument_group("live mode")
    live.add_argument("--no-launch", action="store_true",
                      help="use an anomaly_node that is already running (serving --topic) instead of starting one")
    live.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for a frame's output before counting it lost (default: 10)")
    live.add_argument("--startup-timeout", type=float, default=180.0,
                      help="seconds to wait for the node to come up (default: 180)")
    live.add_argument("--node-qos", choices=("best_effort", "reliable"), default=None,
                      help="input QoS reliability of the launched node (default: the node's own, best_effort). "
                           "Large frames (e.g. 1280x720 rgb8) sent best-effort between processes can be lost "
                           "whole by the DDS; the delivered ratio shows it")
    live.add_argument("--rate-scale", type=float, default=1.0,
                      help="replay speed relative to the recorded rate (default: 1)")
    live.add_argument("--lockstep", action="store_true",
                      help="instead of the recorded rate, send each frame once the node has answered the "
                           "previous one (or --timeout passed): every frame is served, on any machine")
    add_model_arguments(p, deployment=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval.output import check_fresh_output, staged_output

    for option, given in (("--dataset", args.dataset), ("--suite", args.suite)):
        if given and args.mode != "offline":
            raise ValueError(f"{option} works in offline mode only; {args.mode} mode needs --bag")
    if args.obstacles and args.mode != "offline":
        raise ValueError("--obstacles works in offline mode only")
    if args.native_size and not (args.dataset or args.suite):
        raise ValueError("--native-size needs --dataset or --suite (a bag's frames have no single native size)")
    if args.native_size and args.size:
        raise ValueError("give --size or --native-size, not both")
    if args.record is not None and args.mode == "recorded":
        raise ValueError("--record works in offline and live mode; a recorded bag is recorded already")
    if args.record is not None and args.record.exists():
        raise ValueError(f"--record {args.record} exists already; choose a new bag path (bags are never overwritten)")
    check_fresh_output(args.out, args.overwrite)  # before any work
    if args.suite:
        with staged_output(args.out, args.overwrite) as staging:
            return run_suite(args, staging)
    if args.bag is not None:
        args.topic = check_bag(args)  # a damaged bag or a wrong topic: one line, before the model loads
    with staged_output(args.out, args.overwrite) as staging:
        result = evaluate_into(args, staging)
    print_summary(result, args.out)
    return 0


def check_bag(args) -> str:
    """The bag's own name of the camera topic, checked to hold camera frames (live: replayable)."""
    from ..eval.bag_reader import bag_topics, camera_topic, resolve_topic
    from ..eval.replay_message import check_replayable

    if args.mode == "recorded":  # the camera topic is optional there; its siblings matter
        return resolve_topic(args.topic, bag_topics(args.bag)) or args.topic
    topic = camera_topic(args.bag, args.topic)
    if args.mode == "live":
        check_replayable(topic, bag_topics(args.bag)[topic][0])
    return topic


def evaluate_into(args, out: Path):
    """Run the chosen mode with the drive (for a bag) watching, and write the report into ``out``."""
    from ..eval.bag_reader import SkipLog, frame_rate
    from ..eval.drive import DriveRecorder
    from ..eval.map_recorder import MapRecorder
    from ..eval.report import write_report
    from ..topics import output_topics

    components = None if args.no_components else (500, 100)
    if args.native_size:
        from ..eval.datasets import open_dataset
        from ..eval.suite import native_size

        first = open_dataset(args.dataset[0], Path(args.dataset[1]))[0].image
        divisor = anomaly_segmenter_from_args(args).network.size_divisor
        args.size = native_size((first.shape[1], first.shape[0]), divisor)
    segmenter = anomaly_segmenter_from_args(args)  # recorded, live: for the score's name, display range, threshold
    skipped, observers = SkipLog(), []
    if args.bag is not None:  # the video at the camera's rate (recorded mode: the node's output rate)
        rate_topic = output_topics(args.topic)["anomaly"] if args.mode == "recorded" else args.topic
        observers.append(DriveRecorder(out, segmenter.meta, fps=frame_rate(args.bag, rate_topic),
                                       video=not args.no_video))
    if args.record is not None and args.mode == "offline":
        observers.append(MapRecorder(args.record, args.topic))
    try:
        result = _evaluate(args, segmenter, components, skipped, observers)
    except BaseException:
        for observer in observers:
            getattr(observer, "abort", observer.close)()
        raise
    for observer in observers:
        if isinstance(observer, DriveRecorder):
            result.summary["drive"] = observer.finish(skipped.summary())
        else:
            result.summary["recorded_bag"] = str(observer.finish())
    if args.bag is not None:
        result.summary["skipped"] = skipped.summary()
    write_report(result, out)
    return result


def _evaluate(args, segmenter, components, skipped, observers):
    from ..eval.frames import frames_from_bag, frames_from_dataset
    from ..eval.live import NodeOptions, evaluate_live
    from ..eval.offline import evaluate_offline
    from ..eval.recorded import evaluate_recorded

    if args.mode == "recorded":
        return evaluate_recorded(args.bag, args.topic, label_topic=args.label_topic, score=segmenter.score,
                                 meta=segmenter.meta, component_sizes=components, num_worst=args.worst,
                                 skipped=skipped, observers=observers)
    if args.mode == "live":
        return evaluate_live(args.bag, args.topic, label_topic=args.label_topic, score=segmenter.score,
                             meta=segmenter.meta, node_options=NodeOptions.from_args(args),
                             launch=not args.no_launch, timeout_s=args.timeout,
                             startup_timeout_s=args.startup_timeout, record=args.record,
                             rate_scale=args.rate_scale, lockstep=args.lockstep, component_sizes=components,
                             num_worst=args.worst, skipped=skipped, observers=observers)
    if args.dataset:
        from ..eval.datasets import DATASET_KINDS, open_dataset

        dataset = open_dataset(args.dataset[0], Path(args.dataset[1]))
        frames, total = frames_from_dataset(dataset)
        source = f"{dataset.kind}:{dataset.root}"
        components = None if args.no_components else DATASET_KINDS[dataset.kind].component_sizes
    else:
        frames, total = frames_from_bag(args.bag, args.topic, args.label_topic, skipped)
        source = str(args.bag)
    scores = None if args.scores is None else [s.strip() for s in args.scores.split(",") if s.strip()]
    return evaluate_offline(segmenter, frames, total=total, scores=scores, batch_size=args.batch_size,
                            component_sizes=components, num_worst=args.worst, source=source,
                            observers=observers, obstacles=args.obstacles)


def run_suite(args, out: Path) -> int:
    """Every set of the suite file: a report per set in <out>/<set>/, suite.md / suite.json in <out>."""
    import json

    from ..eval import suite
    from ..eval.report import metrics_table, to_json_safe, write_report

    sets = suite.load_suite(args.suite)

    def load(size):
        args.size = size
        return anomaly_segmenter_from_args(args)

    scores = None if args.scores is None else [s.strip() for s in args.scores.split(",") if s.strip()]
    result = suite.run_suite(load, sets, network_size="native" if args.native_size else args.size, scores=scores,
                             batch_size=args.batch_size, num_worst=args.worst, components=not args.no_components,
                             obstacles=args.obstacles)
    lines = [f"# Evaluation suite `{args.suite}`", "", f"- model: `{args.model}`", ""]
    for entry in sets:
        write_report(result.results[entry.name], out / entry.slug, title=entry.name)
        size = result.network_sizes[entry.name]
        table = metrics_table(result.results[entry.name].summary)
        print(f"\n{entry.name} ({result.results[entry.name].summary['num_labelled']} images, network "
              f"{size[0]}x{size[1]}):\n{table}", end="")
        lines += [f"## {entry.name}", "", f"network input {size[0]}×{size[1]}; report: "
                  f"[{entry.slug}/report.md]({entry.slug}/report.md)", "", table]
    overview = suite.suite_table(result)
    print("\nAP / FPR95 in % per set, and the means over the sets:\n" + overview, end="")
    lines += ["## Summary (AP / FPR95 in %)", "", overview]
    (out / "suite.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "suite.json").write_text(json.dumps(to_json_safe(
        {"suite": str(args.suite), "model": args.model, "native_size": args.native_size,
         "network_sizes": result.network_sizes, "summary": suite.suite_summary(result)}), indent=2) + "\n",
        encoding="utf-8")
    print(f"report: {args.out / 'suite.md'}")  # where it is once the run succeeds
    return 0


def print_summary(result, written) -> None:
    """The metrics table, the delivery line of a live run, skipped messages, the drive's files, and where
    the report is (``written``: the report folder, or write_report's name → path)."""
    from ..eval.report import metrics_table

    folder = Path(written) if isinstance(written, (str, Path)) else Path(written["report.md"]).parent
    print(metrics_table(result.summary), end="")
    skipped = result.summary.get("skipped")
    if skipped and skipped["count"]:
        first = skipped["messages"][0]
        print(f"skipped {skipped['count']} malformed message(s), e.g. #{first['index']} on {first['topic']}: "
              f"{first['reason']} (all named in the report)")
    drive = result.summary.get("drive")
    if drive:
        print(f"drive: {drive['frames']} frames; " + ", ".join(str(folder / name) for name in drive["files"]))
    delivery = result.summary.get("delivery")
    if delivery:
        latency = delivery["latency"]
        print(f"delivered {delivery['frames_delivered']}/{delivery['frames_sent']} frames; latency p50 "
              f"{latency['p50_ms'] or float('nan'):.1f} ms, p95 {latency['p95_ms'] or float('nan'):.1f} ms")
    print(f"report: {folder / 'report.md'}")
