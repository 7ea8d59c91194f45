"""``rpl-perception bag``: make ROS 2 bags of camera frames and ground truth, and list what a bag holds.

``bag make OUT`` writes camera frames as ``sensor_msgs/Image`` on ``--topic`` (default
``/cam/image_raw``; with ``--encoding jpeg`` or ``png`` as ``CompressedImage`` on
``/cam/image_raw/compressed``) at ``--rate`` Hz, and ground truth as mono8 images with identical
stamps on the sibling topics (``/cam/labels``: 0 in-distribution, 1 anomaly, 255 void; Cityscapes
train ids on ``/cam/semantic_labels``); see :mod:`rpl_perception.eval.bags`. ``bag info BAG`` lists
any bag's topics (rosbag2 folder, ``.mcap``, ``.db3``, ROS 1 ``.bag``) with type, count, and for image
topics the encoding / format and frame size of the first message; it loads no model.
"""

from pathlib import Path

#: what --dataset KIND accepts (rpl_perception.eval.datasets.DATASET_KINDS, named here so --help stays fast)
DATASET_HELP = ("auto, road_anomaly, fishyscapes_lost_and_found, fishyscapes_static, smiyc_anomaly_track, "
                "smiyc_obstacle_track, lost_and_found, cityscapes")


def register(subparsers):
    p = subparsers.add_parser("bag", help="make ROS 2 bags from images, datasets or videos; list a bag",
                              description=__doc__.splitlines()[0])
    actions = p.add_subparsers(dest="bag_command", required=True, metavar="ACTION")

    make = actions.add_parser(
        "make", help="images (+ label masks), a dataset or a video → a ROS 2 bag",
        description="Write a ROS 2 bag (mcap or sqlite3) of camera frames, with ground truth as mono8 "
                    "images on sibling topics with identical stamps: anomaly labels (0 in, 1 anomaly, 255 "
                    "void) on <ns>/labels, semantic train ids on <ns>/semantic_labels.")
    make.add_argument("out", type=Path, help="bag folder to create (must not exist)")
    source = make.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    source.add_argument("--dataset", nargs=2, metavar=("KIND", "ROOT"),
                        help=f"a labelled dataset; KIND: {DATASET_HELP}. Anomaly sets "
                             "give <ns>/labels, cityscapes gives <ns>/semantic_labels")
    source.add_argument("--video", type=Path, help="a video file (any format OpenCV reads)")
    make.add_argument("--labels", type=Path, default=None,
                      help="with --images FOLDER: label masks matched by file stem, stored as they are "
                           "(0 in, 1 anomaly, 255 void) unless --label-map is given")
    make.add_argument("--label-map", default=None, metavar="RAW:LABEL,...",
                      help="convert raw label values, e.g. 0:0,2:1 for RoadAnomaly; unlisted values become 255")
    make.add_argument("--topic", default=None,
                      help="camera topic (default: /cam/image_raw, or /cam/image_raw/compressed for jpeg / png)")
    make.add_argument("--rate", type=float, default=None,
                      help="frames per second in bag time (default: 10, or the video's rate / --stride)")
    make.add_argument("--stride", type=int, default=1, help="with --video: keep every N-th frame")
    make.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    make.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default: mcap)")
    make.add_argument("--encoding", choices=("rgb8", "bgr8", "jpeg", "png"), default="rgb8",
                      help="camera encoding: rgb8 / bgr8 Image, or jpeg / png CompressedImage (default: rgb8)")
    make.add_argument("--compression", choices=("none", "file", "message"), default="none",
                      help="zstd compression of the bag, as `ros2 bag record --compression-mode` (default: none)")
    make.add_argument("--frame-id", default="camera", help="header frame_id")
    make.add_argument("--start-time", type=float, default=None, metavar="SECONDS",
                      help="stamp of the first frame in seconds since the epoch (default: now)")
    make.set_defaults(func=run_make)

    info = actions.add_parser("info", help="list a bag's topics: type, count, encoding / format, frame size",
                              description="List a bag's topics (rosbag2 folder, .mcap, .db3 or ROS 1 .bag): type, "
                                          "message count and, for image topics, the encoding (Image) or format "
                                          "(CompressedImage) and frame size of the first message.")
    info.add_argument("bag", type=Path)
    info.set_defaults(func=run_info)


def parse_label_map(text):
    if text is None:
        return None
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        mapping = {int(raw): int(label) for raw, label in pairs}
    except ValueError:
        raise ValueError(f"--label-map must look like 0:0,2:1 (raw:label pairs); got {text!r}") from None
    bad = {raw: label for raw, label in mapping.items() if not (0 <= label <= 255 and raw >= 0)}
    if bad or not mapping:
        raise ValueError(f"--label-map needs raw values >= 0 and labels 0..255; got {text!r}")
    return mapping


def dataset_frames(kind, root, label_map=None, image_dir=None, label_dir=None):
    """BagFrames of a labelled dataset (anomaly labels, or semantic ones for closed-set sets) and their count."""
    from ..eval.bags import BagFrame
    from ..eval.datasets import open_dataset
    from ..eval.frames import frames_from_dataset

    options = {}
    if kind == "folders":
        options = {"image_dir": image_dir, "label_dir": label_dir, "label_map": label_map}
    elif label_map is not None:
        raise ValueError("--label-map applies to --images with --labels; a dataset reader maps its own labels")
    frames, total = frames_from_dataset(open_dataset(kind, root, **options))
    return (BagFrame(frame.image, frame.label, frame.semantic) for frame in frames), total


def image_frames(paths):
    from ..eval.bags import BagFrame
    from ..eval.datasets import read_rgb
    from .predict import collect_images

    files = collect_images(paths)
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, paths))}")
    return (BagFrame(read_rgb(path)) for path in files), len(files)


def video_frames(path: Path, stride: int):
    """RGB frames of a video (every ``stride``-th), their count and the video's frame rate."""
    import cv2

    from ..eval.bags import BagFrame

    if stride < 1:
        raise ValueError(f"--stride must be >= 1; got {stride}")
    if not path.is_file():
        raise FileNotFoundError(f"no such video: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"OpenCV cannot open {path} as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames():
        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                if index % stride == 0:
                    yield BagFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            capture.release()

    return frames(), (count + stride - 1) // stride if count > 0 else None, fps


def run_make(args) -> int:
    import itertools
    import os
    import time

    from tqdm import tqdm

    from ..eval.bags import write_frames

    label_map = parse_label_map(args.label_map)
    rate = args.rate
    if args.labels is not None and args.images is None:
        raise ValueError("--labels goes with --images FOLDER")
    if args.dataset:
        frames, total = dataset_frames(args.dataset[0], Path(args.dataset[1]), label_map)
    elif args.video:
        frames, total, fps = video_frames(args.video, args.stride)
        if rate is None:
            if not fps > 0:
                raise ValueError(f"{args.video} does not say its frame rate; give --rate")
            rate = fps / args.stride
    elif args.labels is not None:
        if len(args.images) != 1 or not args.images[0].is_dir():
            raise ValueError("--labels needs --images to be one folder (labels are matched by file stem)")
        images, labels = args.images[0].resolve(), args.labels.resolve()
        root = Path(os.path.commonpath([images, labels]))
        frames, total = dataset_frames("folders", root, label_map, str(images.relative_to(root)),
                                       str(labels.relative_to(root)))
    else:
        if label_map is not None:
            raise ValueError("--label-map needs --labels")
        frames, total = image_frames(args.images)
    if args.max_frames is not None:
        if args.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1; got {args.max_frames}")
        frames = itertools.islice(frames, args.max_frames)
        total = args.max_frames if total is None else min(total, args.max_frames)
    start = time.time() if args.start_time is None else args.start_time
    topic = args.topic or ("/cam/image_raw/compressed" if args.encoding in ("jpeg", "png") else "/cam/image_raw")
    counts = write_frames(args.out, warn_on_unmapped_labels(tqdm(frames, total=total, desc="bag make", unit="frame")),
                          image_topic=topic, rate_hz=10.0 if rate is None else rate,
                          start_ns=round(start * 1e9), storage=args.storage, frame_id=args.frame_id,
                          encoding=args.encoding, compression=args.compression)
    print(f"wrote {args.out} ({args.storage}, {10.0 if rate is None else rate:g} Hz): "
          + ", ".join(f"{topic} {count}" for topic, count in counts.items()))
    return 0


def warn_on_unmapped_labels(frames):
    """Pass frames through; say once if anomaly labels hold values other than 0, 1, 255 (all
    void to the metrics), e.g. RoadAnomaly's raw 2 stored without --label-map 0:0,2:1."""
    import numpy as np
    from tqdm import tqdm

    warned = False
    for frame in frames:
        if not warned and frame.label is not None:
            values = np.unique(frame.label)
            odd = values[(values != 0) & (values != 1) & (values != 255)]
            if odd.size:
                tqdm.write(f"warning: anomaly labels hold values {odd[:10].tolist()}, which the metrics treat as "
                           "void (accepted: 0 in, 1 anomaly, 255 void); convert with --label-map, e.g. 0:0,2:1")
                warned = True
        yield frame


INFO_COLUMNS = ("topic", "type", "count", "encoding/format", "frame size")


def run_info(args) -> int:
    """One tab-separated line per topic under a header; '-' where a column does not apply."""
    from ..eval.bag_reader import inspect_bag

    print("\t".join(INFO_COLUMNS))
    for s in inspect_bag(args.bag):
        size = f"{s.size[0]}x{s.size[1]}" if s.size else "-"
        print("\t".join((s.topic, s.msgtype, str(s.count), s.encoding or "-", size))
              + (f"\t({s.problem})" if s.problem else ""))
    return 0
