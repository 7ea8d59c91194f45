"""ROS 2 bags written and read with rosbags: round trip, stamp matching, `rpl-perception bag`."""

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="bags need the rosbags package (pip install '.[eval]')")

from rpl_perception.cli import main  # noqa: E402
from rpl_perception.eval.bags import (  # noqa: E402
    BagFrame,
    BagImage,
    ImageBagWriter,
    bag_topics,
    label_topic_for,
    match_by_stamp,
    read_images,
    semantic_label_topic_for,
    write_frames,
)

START_NS = 1_700_000_000_123_456_789


def random_frames(count=4, height=24, width=40, seed=0):
    rng = np.random.default_rng(seed)
    return [BagFrame(rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                     rng.choice(np.array([0, 1, 255], np.uint8), (height, width)),
                     rng.integers(0, 19, (height, width), dtype=np.uint8)) for _ in range(count)]


def test_sibling_topics():
    assert label_topic_for("/cam/image_raw") == "/cam/labels"
    assert semantic_label_topic_for("/front/left/image") == "/front/left/semantic_labels"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_round_trip_is_byte_identical(tmp_path, storage, encoding):
    frames = random_frames()
    bag = tmp_path / "bag"
    counts = write_frames(bag, frames, rate_hz=7.0, start_ns=START_NS, storage=storage, encoding=encoding,
                          frame_id="cam_optical")
    assert counts == {"/cam/image_raw": 4, "/cam/labels": 4, "/cam/semantic_labels": 4}
    assert any(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))
    assert bag_topics(bag) == {topic: ("sensor_msgs/msg/Image", 4) for topic in counts}

    topics = list(counts)
    messages = list(read_images(bag, topics, rgb_topics=["/cam/image_raw"]))
    assert len(messages) == 12
    expected_stamps = [START_NS + round(i * 1e9 / 7.0) for i in range(4)]
    for topic, field in zip(topics, ("image", "label", "semantic")):
        got = [m for m in messages if m.topic == topic]
        assert [m.stamp_ns for m in got] == expected_stamps
        assert [m.log_time_ns for m in got] == expected_stamps  # bag time = header stamp
        assert {m.frame_id for m in got} == {"cam_optical"}
        assert {m.encoding for m in got} == {encoding if topic == "/cam/image_raw" else "mono8"}
        for message, frame in zip(got, frames):
            original = getattr(frame, field)
            assert message.pixels.dtype == np.uint8 and message.pixels.shape == original.shape
            assert message.pixels.tobytes() == original.tobytes()


def test_stored_bytes_are_the_camera_encoding(tmp_path):
    """bgr8 frames hold BGR bytes in the message (what a camera driver sends), RGB after decoding."""
    frame = random_frames(1)[0]
    write_frames(tmp_path / "bag", [frame], encoding="bgr8", start_ns=START_NS)
    raw = next(read_images(tmp_path / "bag", ["/cam/image_raw"]))  # not decoded to RGB
    assert raw.encoding == "bgr8"
    np.testing.assert_array_equal(raw.pixels, frame.image[:, :, ::-1])


def test_float_maps_round_trip(tmp_path):
    scores = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    with ImageBagWriter(tmp_path / "bag", storage="sqlite3") as bag:
        bag.write("/cam/anomaly", scores, 42, encoding="32FC1", log_time_ns=50)
    (message,) = read_images(tmp_path / "bag", ["/cam/anomaly"])
    assert (message.stamp_ns, message.log_time_ns, message.encoding) == (42, 50, "32FC1")
    assert message.pixels.dtype == np.float32
    assert message.pixels.tobytes() == scores.tobytes()


def test_writer_and_reader_errors(tmp_path):
    write_frames(tmp_path / "bag", random_frames(1), start_ns=START_NS)
    with pytest.raises(FileExistsError, match="exists already"):
        write_frames(tmp_path / "bag", random_frames(1))
    with pytest.raises(ValueError, match="unknown bag storage 'rosbag1'"):
        ImageBagWriter(tmp_path / "other", storage="rosbag1")
    with ImageBagWriter(tmp_path / "b4") as bag, pytest.raises(ValueError, match="log_time_ns must be integer"):
        bag.write("/cam/x", np.zeros((2, 2), np.uint8), 5, encoding="mono8", log_time_ns=5e9)
    with pytest.raises(ValueError, match="rate must be > 0"):
        write_frames(tmp_path / "b2", random_frames(1), rate_hz=0)
    bad = BagFrame(np.zeros((4, 6, 3), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="label must be an H×W uint8 map of the image's size 6×4"):
        write_frames(tmp_path / "b3", [bad])
    with pytest.raises(ValueError, match="no image topic /cam/anomaly .*; its image topics: /cam/image_raw, /cam/labels"):
        list(read_images(tmp_path / "bag", ["/cam/anomaly"]))
    with pytest.raises(FileNotFoundError, match="no such bag"):
        bag_topics(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is not a bag: a rosbag2 folder holds metadata.yaml"):
        bag_topics(tmp_path / "folder")


def _image(topic, stamp):
    return BagImage(topic, stamp, stamp, "", "mono8", np.zeros((1, 1), np.uint8))


def test_match_by_stamp_groups_and_bounds_pending():
    a, b = "/cam/image_raw", "/cam/anomaly"
    stream = [_image(a, 1), _image(a, 2), _image(b, 1), _image(a, 3), _image(a, 4), _image(b, 4), _image(b, 9)]
    groups = list(match_by_stamp(stream, [a, b], max_pending=2))
    # 1 completes; 2 is flushed when 3 more stamps wait than allowed; 4 completes; 3 and 9 end incomplete
    assert [(g.stamp_ns, g.complete, sorted(g.images)) for g in groups] == [
        (1, True, [b, a]), (2, False, [a]), (4, True, [b, a]), (3, False, [a]), (9, False, [b])]


def test_match_by_stamp_ordered_keeps_camera_order():
    """Replay order: a frame without ground truth does not fall behind the labelled ones."""
    a, b = "/cam/image_raw", "/cam/labels"
    stream = [_image(a, 1), _image(a, 2), _image(b, 2), _image(a, 3), _image(a, 4), _image(b, 4), _image(a, 5)]
    groups = list(match_by_stamp(stream, [a, b], max_pending=2, ordered=True))
    assert [(g.stamp_ns, g.complete, sorted(g.images)) for g in groups] == [
        (1, False, [a]), (2, True, [a, b]), (3, False, [a]), (4, True, [a, b]), (5, False, [a])]


def test_cli_bag_make_from_image_and_label_folders(tmp_path, capsys):
    images, labels = tmp_path / "data" / "images", tmp_path / "data" / "masks"
    images.mkdir(parents=True)
    labels.mkdir()
    frames = random_frames(3, 16, 20)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(images / f"f{i}.png"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(labels / f"f{i}.png"), np.where(frame.label == 1, 2, 0).astype(np.uint8))  # RoadAnomaly style
    out = tmp_path / "bag"
    assert main(["bag", "make", str(out), "--images", str(images), "--labels", str(labels), "--label-map", "0:0,2:1",
                 "--rate", "4", "--start-time", "100", "--storage", "sqlite3", "--topic", "/front/image"]) == 0
    assert "wrote" in capsys.readouterr().out
    got = list(read_images(out, ["/front/image", "/front/labels"], rgb_topics=["/front/image"]))
    cams = [m for m in got if m.topic == "/front/image"]
    assert [m.stamp_ns for m in cams] == [100_000_000_000, 100_250_000_000, 100_500_000_000]
    for message, frame in zip(cams, frames):
        np.testing.assert_array_equal(message.pixels, frame.image)
    for message, frame in zip([m for m in got if m.topic == "/front/labels"], frames):
        np.testing.assert_array_equal(message.pixels, (frame.label == 1).astype(np.uint8))

    assert main(["bag", "make", str(tmp_path / "raw"), "--images", str(images), "--labels", str(labels)]) == 0
    assert "anomaly labels hold values [2]" in capsys.readouterr().out  # RoadAnomaly's 2 without --label-map

    assert main(["bag", "info", str(out)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing == ["topic\ttype\tcount\tencoding/format\tframe size",
                       "/front/image\tsensor_msgs/msg/Image\t3\trgb8\t20x16",
                       "/front/labels\tsensor_msgs/msg/Image\t3\tmono8\t20x16"]


def test_cli_bag_make_from_video_keeps_every_nth_frame(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 24))
    assert writer.isOpened()
    for i in range(9):
        writer.write(np.full((24, 32, 3), i * 25, np.uint8))
    writer.release()
    out = tmp_path / "bag"
    assert main(["bag", "make", str(out), "--video", str(video), "--stride", "3", "--start-time", "0"]) == 0
    cams = list(read_images(out, ["/cam/image_raw"], rgb_topics=["/cam/image_raw"]))
    assert len(cams) == 3
    assert [m.stamp_ns for m in cams] == [0, 150_000_000, 300_000_000]  # 20 fps / stride 3
    # frames 0, 3, 6 (grey levels 0, 75, 150, up to JPEG error)
    assert [int(round(m.pixels.mean())) for m in cams] == pytest.approx([0, 75, 150], abs=3)


def test_cli_bag_make_errors(tmp_path, capsys):
    assert main(["bag", "make", str(tmp_path / "b"), "--images", str(tmp_path), "--label-map", "x"]) == 2
    assert "--label-map must look like 0:0,2:1" in capsys.readouterr().err
    assert main(["bag", "make", str(tmp_path / "b"), "--video", str(tmp_path / "none.mp4")]) == 2
    assert "no such video" in capsys.readouterr().err
    assert main(["bag", "make", str(tmp_path / "b"), "--images", str(tmp_path)]) == 2
    assert "no images found" in capsys.readouterr().err
