"""A drive you can watch: overlay video, most anomalous frames, timeline and CSV for any bag, labelled
or not; a fresh --out per run; --record of the maps; live replay of a compressed camera."""

import csv
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="bags need the rosbags package (pip install '.[eval]')")

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model  # noqa: E402
from rpl_perception.cli import main  # noqa: E402
from rpl_perception.eval.bags import BagFrame, write_frames  # noqa: E402
from rpl_perception.eval.drive import DriveRecorder, letterbox  # noqa: E402
from rpl_perception.eval.frames import EvalFrame  # noqa: E402
from rpl_perception.eval.output import staged_output  # noqa: E402

START_NS = 1_700_000_000_000_000_000
MODEL = ["--backend", "torch", "--size", "128x64"]


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames, capture.get(cv2.CAP_PROP_FPS)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the recorder alone

def test_drive_recorder_streams_video_csv_sheet_and_timeline(tmp_path):
    """Known score maps: the CSV holds their statistics, the video their colours, the sheet their order."""
    meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)[1]  # energy: display range and threshold recorded
    low, high = meta.display_range["energy"]
    threshold = meta.anomaly_threshold["energy"]
    recorder = DriveRecorder(tmp_path, meta, fps=5.0, max_side=200)
    fractions = [0.0, 0.5, 0.25]
    for i, fraction in enumerate(fractions):
        score = np.full((60, 160), low, np.float32)
        score[:, : int(160 * fraction)] = high + 1.0  # the left part anomalous
        image = np.full((120, 320, 3), 90, np.uint8)  # the camera frame may be larger than the map
        recorder.add(EvalFrame(f"#{i}", image, None, None, START_NS + i * 200_000_000), "energy", score,
                     latency_s=0.01 * (i + 1))
    summary = recorder.finish({"messages": [{"stamp_ns": START_NS + 100_000_000}]})
    assert summary["files"] == ["overlay.mp4", "most_anomalous.png", "timeline.png", "frames.csv"]
    assert [m["index"] for m in summary["most_anomalous"]] == [1, 2, 0]  # largest anomalous area first
    assert summary["threshold"] == threshold and summary["display_range"] == (low, high)

    rows = read_csv(tmp_path / "frames.csv")
    assert [float(r["anomalous_fraction"]) for r in rows] == pytest.approx(fractions)
    assert [float(r["latency_ms"]) for r in rows] == pytest.approx([10.0, 20.0, 30.0])
    assert [int(r["stamp_ns"]) for r in rows] == [START_NS + i * 200_000_000 for i in range(3)]
    assert {(r["width"], r["height"], r["labelled"]) for r in rows} == {("160", "60", "0")}
    assert float(rows[1]["max_score"]) == pytest.approx(high + 1.0, rel=1e-6)  # 7 significant digits

    video, fps = read_video(tmp_path / "overlay.mp4")
    assert len(video) == 3 and fps == pytest.approx(5.0)
    assert video[0].shape == (76, 200, 3)  # longest side 200, even sides
    # frame 1 on grey: left half TURBO's dark red (above the range), right half its dark blue (the low end)
    left, right = video[1][50:70, 20:80].mean(axis=(0, 1)), video[1][50:70, 120:180].mean(axis=(0, 1))
    assert left[0] > left[2] + 40 and left[0] > right[0] + 25 and right[2] > left[2] + 20
    for name in ("most_anomalous.png", "timeline.png"):
        assert cv2.imread(str(tmp_path / name)).shape[0] > 200


def test_letterbox_fits_mixed_frame_sizes_into_one_video_size():
    tall = np.full((100, 50, 3), 200, np.uint8)
    boxed = letterbox(tall, (80, 40))
    assert boxed.shape == (40, 80, 3)
    assert (boxed[:, :30] == 0).all() and (boxed[:, 50:] == 0).all() and (boxed[:, 30:50] == 200).all()


# ----------------------------------------------------------------------------- fresh --out

def test_out_is_fresh_per_run_and_replaced_whole(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old_plot.png").write_bytes(b"x")
    write_frames(tmp_path / "bag", [BagFrame(np.zeros((32, 48, 3), np.uint8))], start_ns=START_NS)
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(out), *MODEL]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not empty" in err and "--overwrite" in err
    assert (out / "old_plot.png").exists()
    with pytest.raises(RuntimeError), staged_output(out, overwrite=True) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("the run failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "report"]  # no staging folder left
    assert (out / "old_plot.png").exists()  # a failed run loses nothing
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(out), "--overwrite", *MODEL]) == 0
    assert not (out / "old_plot.png").exists() and (out / "report.md").is_file()


# ----------------------------------------------------------------------------- real bags end to end

def test_eval_on_a_ros1_compressed_bag_writes_the_drive(shared_dir, tmp_path, capsys):
    bag = shared_dir / "data" / "bags_thirdparty" / "ros1" / "fiducials_aruco_images.bag"
    out = tmp_path / "report"
    assert main(["eval", "--bag", str(bag), "--topic", "raspicam_node/image/compressed", "--out", str(out),
                 *MODEL]) == 0
    printed = capsys.readouterr().out
    assert "no anomaly ground truth" in printed and f"drive: 1 frames; {out / 'overlay.mp4'}" in printed
    rows = read_csv(out / "frames.csv")
    assert len(rows) == 1 and (rows[0]["width"], rows[0]["height"]) == ("1280", "960")
    video, _ = read_video(out / "overlay.mp4")
    assert len(video) == 1 and video[0].shape == (720, 960, 3)
    report = json.loads((out / "report.json").read_text())
    assert report["source"] == str(bag) and report["skipped"]["count"] == 0
    assert "![most anomalous frames](most_anomalous.png)" in (out / "report.md").read_text()


def test_a_recorded_drive_as_a_compressed_bag(shared_dir, tmp_path, capsys):
    """Udacity highway footage (public, ../shared) → zstd sqlite3 bag of JPEG CompressedImage → the drive,
    and --record of the maps beside the frames as recorded."""
    video = str(shared_dir / "data" / "driving_udacity" / "videos" / "project_video_clip1.mp4")
    bag = tmp_path / "drive"
    assert main(["bag", "make", str(bag), "--video", video, "--stride", "5", "--max-frames", "8",
                 "--encoding", "jpeg", "--storage", "sqlite3", "--compression", "file", "--start-time", "100"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["eval", "--bag", str(bag), "--topic", "cam/image_raw/compressed", "--out", str(out),
                 "--record", str(tmp_path / "maps"), *MODEL]) == 0
    rows = read_csv(out / "frames.csv")
    assert len(rows) == 8 and [int(r["stamp_ns"]) for r in rows] == [100_000_000_000 + i * 200_000_000
                                                                     for i in range(8)]  # 25 fps / stride 5
    frames, fps = read_video(out / "overlay.mp4")
    assert len(frames) == 8 and frames[0].shape == (540, 960, 3) and fps == pytest.approx(5.0)
    assert main(["bag", "info", str(tmp_path / "maps")]) == 0
    listing = capsys.readouterr().out
    assert "/cam/image_raw/compressed\tsensor_msgs/msg/CompressedImage\t8\tjpeg\t1280x720" in listing
    assert "/cam/anomaly\tsensor_msgs/msg/Image\t8\t32FC1\t1280x720" in listing


def test_offline_record_is_scored_the_same_by_recorded_mode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        label = np.zeros((40, 72), np.uint8)
        label[10:25, 20:40] = 1
        frames.append(BagFrame(rng.integers(0, 256, (40, 72, 3), dtype=np.uint8), label))
    write_frames(tmp_path / "bag", frames, start_ns=START_NS)
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "offline"), "--scores", "energy",
                 "--score", "energy", "--record", str(tmp_path / "maps"), *MODEL]) == 0
    assert main(["eval", "--bag", str(tmp_path / "maps"), "--out", str(tmp_path / "recorded"), "--mode", "recorded",
                 "--score", "energy", *MODEL]) == 0
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "again"), "--record",
                 str(tmp_path / "maps"), *MODEL]) == 2
    assert f"--record {tmp_path / 'maps'} exists already" in capsys.readouterr().err
    offline = json.loads((tmp_path / "offline" / "report.json").read_text())
    recorded = json.loads((tmp_path / "recorded" / "report.json").read_text())
    assert recorded["num_labelled"] == 3
    assert recorded["metrics"]["energy"]["ap"] == pytest.approx(offline["metrics"]["energy"]["ap"], abs=1e-12)
    assert offline["recorded_bag"] == str(tmp_path / "maps")
    assert len(read_csv(tmp_path / "recorded" / "frames.csv")) == 3


# ----------------------------------------------------------------------------- live, over DDS

@pytest.mark.skipif(not all(importlib.util.find_spec(n) for n in ("rclpy", "sensor_msgs")),
                    reason="live mode needs rclpy and sensor_msgs (pip install '.[ros]')")
def test_live_replays_a_compressed_camera_as_compressed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(20 + os.getpid() % 80))  # away from other tests and machines
    rng = np.random.default_rng(3)
    frames = [BagFrame(cv2.GaussianBlur(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8), (5, 5), 0))
              for _ in range(3)]
    write_frames(tmp_path / "bag", frames, start_ns=START_NS, image_topic="/cam/image_raw/compressed",
                 encoding="jpeg")
    out = tmp_path / "report"
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--topic", "/cam/image_raw/compressed", "--out", str(out),
                 "--mode", "live", "--lockstep", "--timeout", "30", "--score", "energy", "--size", "128x64",
                 "--no-video"]) == 0
    assert "delivered 3/3 frames" in capsys.readouterr().out
    rows = read_csv(out / "frames.csv")
    assert len(rows) == 3 and all(float(r["latency_ms"]) > 0 for r in rows)
    assert {(r["width"], r["height"]) for r in rows} == {("96", "48")}  # the node decoded the JPEG bytes
    assert (out / "timeline.png").is_file()


def test_mixed_encodings_and_frame_sizes_make_one_video(tmp_path, capsys):
    """rgb8, bgr8, mono8 and bayer_rggb8 frames of three sizes in one bag: one video size, letterboxed."""
    from rpl_perception.eval.bags import ImageBagWriter

    rng = np.random.default_rng(1)
    frames = [("rgb8", rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)),
              ("bgr8", rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)),
              ("mono8", rng.integers(0, 256, (30, 90), dtype=np.uint8)),
              ("bayer_rggb8", rng.integers(0, 256, (40, 80), dtype=np.uint8))]
    with ImageBagWriter(tmp_path / "bag") as bag:
        for i, (encoding, pixels) in enumerate(frames):
            bag.write("/cam/image_raw", pixels, START_NS + i * 100_000_000, encoding=encoding)
    out = tmp_path / "report"
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(out), *MODEL]) == 0
    assert "frame/s" in capsys.readouterr().err  # the progress bar's rate
    rows = read_csv(out / "frames.csv")
    assert [(int(r["width"]), int(r["height"])) for r in rows] == [(80, 40), (60, 60), (90, 30), (80, 40)]
    video, fps = read_video(out / "overlay.mp4")
    assert len(video) == 4 and {f.shape for f in video} == {(40, 80, 3)} and fps == pytest.approx(10.0)
    assert video[1][:, :5].max() < 40  # the square frame sits between black bars


def test_recorded_mode_on_a_vehicle_bag_without_ground_truth(tmp_path, capsys):
    """Camera and node outputs as `ros2 bag record` keeps them on the vehicle: no labels, still a drive."""
    from rpl_perception.eval.bags import ImageBagWriter

    rng = np.random.default_rng(2)
    with ImageBagWriter(tmp_path / "bag") as bag:
        for i in range(4):
            stamp = START_NS + i * 100_000_000
            bag.write("/cam/image_raw", rng.integers(0, 256, (30, 50, 3), dtype=np.uint8), stamp, encoding="rgb8")
            if i != 2:  # one output lost
                score = np.full((30, 50), -10.0, np.float32)
                score[:, : 10 * i] = 0.0
                bag.write("/cam/anomaly", score, stamp, encoding="32FC1", log_time_ns=stamp + 40_000_000)
    out = tmp_path / "report"
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--mode", "recorded", "--score", "energy", "--out",
                 str(out), *MODEL]) == 0
    assert "delivered 3/4 frames; latency p50 40.0 ms" in capsys.readouterr().out
    rows = read_csv(out / "frames.csv")
    assert [float(r["anomalous_fraction"]) for r in rows] == pytest.approx([0.0, 0.2, 0.6])
    assert [int(r["stamp_ns"]) for r in rows] == [START_NS, START_NS + 100_000_000, START_NS + 300_000_000]
    assert len(read_video(out / "overlay.mp4")[0]) == 3
