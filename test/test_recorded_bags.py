"""The bags people record: ROS 1 .bag files, bare .mcap, sqlite3 + zstd, CompressedImage (JPEG / PNG)
topics, damaged files and malformed messages, read through one AnyReader path.

Real third-party bags come from ``../shared/data/bags_thirdparty`` (skipped where absent); the other
cases are generated here from the bundled public sample frames with the rosbags writer.
"""

import json
import shutil

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="bags need the rosbags package (pip install '.[eval]')")

from rpl_perception.cli import main  # noqa: E402
from rpl_perception.commands.demo import sample_frames  # noqa: E402
from rpl_perception.eval.bag_reader import (  # noqa: E402
    COMPRESSED_MSGTYPE,
    DamagedBagError,
    SkipLog,
    camera_topic,
    inspect_bag,
    read_images,
    resolve_topic,
)
from rpl_perception.eval.bags import BagFrame, ImageBagWriter, write_frames  # noqa: E402
from rpl_perception.eval.replay_message import check_replayable  # noqa: E402

START_NS = 1_700_000_000_000_000_000
MODEL = ["--backend", "torch", "--size", "128x64"]  # small and export-free: these tests are about bags


@pytest.fixture(scope="module")
def frames():
    """Two Udacity drive frames and two labelled RoadAnomaly scenes, at 320×180 (public samples)."""
    picked = [f for i, f in enumerate(sample_frames()[0]) if i in (0, 5, 11, 12)]
    small = []
    for frame in picked:
        image = cv2.resize(frame.image, (320, 180), interpolation=cv2.INTER_AREA)
        label = None if frame.label is None else cv2.resize(frame.label, (320, 180), interpolation=cv2.INTER_NEAREST)
        small.append(BagFrame(image, label))
    assert [f.label is not None for f in small] == [False, False, True, True]
    return small


def bare_mcap(tmp_path, frames, **options):
    """A bare .mcap file (no metadata.yaml), as `ros2 bag record -s mcap` leaves one next to others."""
    write_frames(tmp_path / "folder", frames, start_ns=START_NS, **options)
    path = tmp_path / "drive.mcap"
    shutil.move(str(next((tmp_path / "folder").glob("*.mcap"))), path)
    shutil.rmtree(tmp_path / "folder")
    return path


def info_lines(capsys, bag):
    assert main(["bag", "info", str(bag)]) == 0
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


# ----------------------------------------------------------------------------- reading every kind

def test_ros1_bag_with_a_compressed_camera(shared_dir, capsys):
    """A ROS 1 bag recorded by a Raspberry Pi camera driver (UbiquityRobotics/fiducials test data)."""
    bag = shared_dir / "data" / "bags_thirdparty" / "ros1" / "fiducials_aruco_images.bag"
    lines = info_lines(capsys, bag)
    assert lines[0] == ["topic", "type", "count", "encoding/format", "frame size"]
    assert lines[1:] == [["/raspicam_node/camera_info", "sensor_msgs/msg/CameraInfo", "15", "-", "-"],
                         ["/raspicam_node/image/compressed", COMPRESSED_MSGTYPE, "1", "jpg", "1280x960"]]
    (message,) = read_images(bag, ["/raspicam_node/image/compressed"], rgb_topics=["/raspicam_node/image/compressed"])
    assert message.pixels.shape == (960, 1280, 3) and message.encoding == "jpg"  # as this driver spells it
    assert message.compressed[:2] == b"\xff\xd8"  # the recorded JPEG bytes, kept for live replay
    assert message.stamp_ns > 0


def test_topic_names_match_with_or_without_the_leading_slash(shared_dir, tmp_path):
    bag = shared_dir / "data" / "bags_thirdparty" / "ros1" / "fiducials_fiducial_board_611.bag"
    # this bag stores its camera topic without the leading /
    assert camera_topic(bag, "/raspicam_node/camera/image/compressed") == "raspicam_node/camera/image/compressed"
    with pytest.raises(ValueError, match="has topic /raspicam_node/camera/camera_info of type sensor_msgs/msg/"
                                         "CameraInfo; its image topics .*: raspicam_node/camera/image/compressed"):
        camera_topic(bag, "raspicam_node/camera/camera_info")
    assert resolve_topic("camera/image_raw", ["/camera/image_raw", "/x"]) == "/camera/image_raw"
    assert resolve_topic("/camera/image_raw", ["/camera/image_raw"]) == "/camera/image_raw"
    assert resolve_topic("/camera/image", ["/camera/image_raw"]) is None
    write_frames(tmp_path / "bag", [BagFrame(np.zeros((8, 8, 3), np.uint8))], image_topic="/camera/image_raw")
    assert camera_topic(tmp_path / "bag", "camera/image_raw") == "/camera/image_raw"


def test_rosbag2_bags_without_images_are_refused_before_the_model_loads(shared_dir, capsys, tmp_path, monkeypatch):
    """rosbag2's own test fixtures (talker, metadata v4), sqlite3 and mcap: no image topic."""
    import rpl_perception.commands.evaluate as evaluate

    monkeypatch.setattr(evaluate, "anomaly_segmenter_from_args", lambda args: pytest.fail("the model loaded"))
    for storage in ("sqlite3", "mcap"):
        bag = shared_dir / "data" / "bags_thirdparty" / "rosbag2" / f"rosbag2_talker_{storage}"
        lines = info_lines(capsys, bag)
        assert ["/topic", "std_msgs/msg/String", "10", "-", "-"] in lines
        assert main(["eval", "--bag", str(bag), "--out", str(tmp_path / storage)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has no topic /cam/image_raw" in err and "its image topics" in err
        assert "none" in err and not (tmp_path / storage).exists()


@pytest.mark.parametrize("compression", ["file", "message"])
def test_sqlite3_with_zstd_reads_what_was_written(tmp_path, frames, compression, capsys):
    bag = tmp_path / "bag"
    write_frames(bag, frames, start_ns=START_NS, storage="sqlite3", compression=compression, encoding="bgr8")
    assert list(bag.glob("*.zstd" if compression == "file" else "*.db3"))
    lines = info_lines(capsys, bag)
    assert ["/cam/image_raw", "sensor_msgs/msg/Image", "4", "bgr8", "320x180"] in lines
    assert ["/cam/labels", "sensor_msgs/msg/Image", "2", "mono8", "320x180"] in lines
    got = list(read_images(bag, ["/cam/image_raw"], rgb_topics=["/cam/image_raw"]))
    for message, frame in zip(got, frames):
        np.testing.assert_array_equal(message.pixels, frame.image)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_topics_in_a_bare_mcap(tmp_path, frames, fmt, capsys):
    topic = "/cam/image_raw/compressed"
    bag = bare_mcap(tmp_path, frames, image_topic=topic, encoding=fmt)
    lines = info_lines(capsys, bag)
    assert [topic, COMPRESSED_MSGTYPE, "4", fmt, "320x180"] in lines
    assert ["/cam/labels", "sensor_msgs/msg/Image", "2", "mono8", "320x180"] in lines  # siblings of the camera
    got = list(read_images(bag, [topic], rgb_topics=[topic]))
    assert [m.stamp_ns for m in got] == [START_NS + i * 100_000_000 for i in range(4)]
    for message, frame in zip(got, frames):
        error = np.abs(message.pixels.astype(int) - frame.image).mean()
        assert error == 0 if fmt == "png" else error < 4  # PNG is lossless, JPEG nearly so


def test_depth_formats_are_refused_by_name(tmp_path):
    with ImageBagWriter(tmp_path / "bag") as bag:
        bag.write_compressed("/depth/image_raw/compressedDepth", None, START_NS, fmt="16UC1; compressedDepth png",
                             encoded=cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes())
    with pytest.raises(ValueError, match="holds depth maps .*compressedDepth.*not camera frames"):
        camera_topic(tmp_path / "bag", "/depth/image_raw/compressedDepth")


# ----------------------------------------------------------------------------- bad input

def corrupt_bags(tmp_path, frames):
    """name → (bag path, what the one-line error must name)."""
    bags = {}
    mcap = bare_mcap(tmp_path, frames[:2])
    data = mcap.read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) // 2])  # a recorder killed mid-write
    bags["truncated mcap"] = (tmp_path / "cut.mcap", ["cut.mcap", "File end magic is invalid",
                                                      f"mcap recover {tmp_path / 'cut.mcap'}"])
    write_frames(tmp_path / "db", frames[:2], storage="sqlite3")
    db3 = next((tmp_path / "db").glob("*.db3"))
    db3.write_bytes(db3.read_bytes()[:3000])
    bags["truncated db3"] = (tmp_path / "db", [str(db3), "database disk image is malformed"])
    write_frames(tmp_path / "gone", frames[:1])
    next((tmp_path / "gone").glob("*.mcap")).unlink()
    bags["missing data file"] = (tmp_path / "gone", ["gone", "missing"])
    write_frames(tmp_path / "yaml", frames[:1])
    (tmp_path / "yaml" / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n")
    bags["unparsable metadata"] = (tmp_path / "yaml", ["yaml", "metadata"])
    (tmp_path / "cut.bag").write_bytes(b"#ROSBAG V2.0\n" + bytes(20))
    bags["truncated ROS 1 bag"] = (tmp_path / "cut.bag", ["cut.bag"])
    return bags


def test_damaged_bags_give_one_line_and_write_nothing(tmp_path, frames, capsys, monkeypatch):
    import rpl_perception.commands.evaluate as evaluate

    monkeypatch.setattr(evaluate, "anomaly_segmenter_from_args", lambda args: pytest.fail("the model loaded"))
    for name, (bag, named) in corrupt_bags(tmp_path, frames).items():
        with pytest.raises(DamagedBagError):
            inspect_bag(bag)
        for command in (["bag", "info", str(bag)], ["eval", "--bag", str(bag), "--out", str(tmp_path / "out")]):
            assert main(command) == 2, name
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
            assert f"error: damaged bag {tmp_path}" in err, (name, err)
            for part in named:
                assert part in err, (name, part, err)
        assert not (tmp_path / "out").exists()


def write_with_malformed(path, frames, topic="/cam/image_raw/compressed"):
    """Good JPEG frames with, at message 2, bytes that are no JPEG and, at message 4, a CDR message cut short."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    with ImageBagWriter(path) as bag:
        for i, frame in enumerate(frames):
            stamp = START_NS + i * 100_000_000
            bag.write_compressed(topic, frame.image, stamp)
            if frame.label is not None:
                bag.write("/cam/labels", frame.label, stamp, encoding="mono8")
            if i == 1:
                header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1_700_000_000,
                                                      nanosec=150_000_000), frame_id="camera")
                junk = types[COMPRESSED_MSGTYPE](header=header, format="jpeg", data=np.arange(64, dtype=np.uint8))
                bag.write_raw(topic, COMPRESSED_MSGTYPE, store.serialize_cdr(junk, COMPRESSED_MSGTYPE),
                              START_NS + 150_000_000)
            if i == 2:
                bag.write_raw(topic, COMPRESSED_MSGTYPE, b"\x00\x01\x00\x00\x12", START_NS + 250_000_000)


def test_malformed_messages_are_skipped_counted_and_named(tmp_path, frames, capsys):
    write_with_malformed(tmp_path / "bag", frames)
    skipped = SkipLog()
    got = list(read_images(tmp_path / "bag", ["/cam/image_raw/compressed"], ["/cam/image_raw/compressed"], skipped))
    assert len(got) == 4 and skipped.count == 2
    first, second = skipped.messages
    assert (first.topic, first.index, first.stamp_ns) == ("/cam/image_raw/compressed", 2, START_NS + 150_000_000)
    assert "cannot read the image size" in first.reason
    assert (second.index, second.stamp_ns) == (4, START_NS + 250_000_000)  # no header: the bag time
    assert "cannot deserialise 5 bytes" in second.reason
    with pytest.raises(ValueError, match="message #2 on /cam/image_raw/compressed .* is malformed"):
        list(read_images(tmp_path / "bag", ["/cam/image_raw/compressed"]))

    out = tmp_path / "report"
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--topic", "cam/image_raw/compressed", "--out", str(out),
                 "--no-video", *MODEL]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 malformed message(s), e.g. #2 on /cam/image_raw/compressed" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["num_frames"] == 4 and report["num_labelled"] == 2  # the run went on and scored
    assert report["skipped"]["count"] == 2
    assert [(m["index"], m["stamp_ns"]) for m in report["skipped"]["messages"]] == [
        (2, START_NS + 150_000_000), (4, START_NS + 250_000_000)]
    markdown = (out / "report.md").read_text()
    assert "2 malformed message(s) skipped." in markdown
    assert "| /cam/image_raw/compressed | 2 | stamp 1700000000.150000000 | cannot read the image size" in markdown


def test_live_replay_needs_a_topic_name_that_says_its_type():
    check_replayable("/cam/image_raw/compressed", COMPRESSED_MSGTYPE)
    check_replayable("/cam/image_raw", "sensor_msgs/msg/Image")
    with pytest.raises(ValueError, match="name and type disagree"):
        check_replayable("/cam/jpeg", COMPRESSED_MSGTYPE)
    with pytest.raises(ValueError, match="not camera frames"):
        check_replayable("/cam/info", "sensor_msgs/msg/CameraInfo")
