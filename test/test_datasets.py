"""Dataset readers on tiny fake layouts in tmp_path, and on the real RoadAnomaly dev subset."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from rpl_perception.eval.datasets import (
    CITYSCAPES_ID_TO_TRAIN_ID,
    DATASET_KINDS,
    DatasetLayoutError,
    LabelledImageDataset,
    detect_kind,
    open_dataset,
    read_label,
)

RED_RGB = (255, 0, 0)
H, W = 6, 8


def write_image(path: Path, rgb=RED_RGB):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((H, W, 3), np.uint8)
    image[:] = rgb[::-1]  # OpenCV writes BGR
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if path.suffix == ".webp" else []
    assert cv2.imwrite(str(path), image, params)


def write_label(path: Path, values, dtype=np.uint8):
    """A label map whose first pixels hold ``values`` (rest 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.zeros(H * W, dtype)
    label[:len(values)] = values
    assert cv2.imwrite(str(path), label.reshape(H, W))


def first_values(label, count):
    return label.ravel()[:count].tolist()


def test_fishyscapes_layout_and_parent_folder(tmp_path):
    root = tmp_path / "fishyscapes" / "LostAndFound"
    for name in ("b", "a"):
        write_image(root / "original" / f"{name}.png")
        write_label(root / "labels" / f"{name}.png", [0, 1, 255, 7])
    dataset = open_dataset("fishyscapes_lost_and_found", root)
    assert dataset.names == ["a", "b"]
    name, image, label = dataset[0]
    assert name == "a" and image.shape == (H, W, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == RED_RGB
    assert label.dtype == np.uint8 and first_values(label, 4) == [0, 1, 255, 255]
    # the parent fishyscapes/ folder works too, and auto-detection finds the kind from the layout
    assert open_dataset("fishyscapes_lost_and_found", tmp_path / "fishyscapes").root == root
    assert detect_kind(root) == "fishyscapes_lost_and_found"
    static = tmp_path / "fs_static"
    write_image(static / "original" / "x.png")
    write_label(static / "labels" / "x.png", [1])
    assert detect_kind(static) == "fishyscapes_static"


def test_smiyc_tracks_pair_from_labels(tmp_path):
    anomaly = tmp_path / "dataset_AnomalyTrack"
    write_image(anomaly / "images" / "validation0001.jpg")
    write_image(anomaly / "images" / "test0001.jpg")  # test frames have no released labels
    write_label(anomaly / "labels_masks" / "validation0001_labels_semantic.png", [0, 1, 255, 3])
    write_image(anomaly / "labels_masks" / "validation0001_labels_semantic_color.png")
    dataset = open_dataset("auto", anomaly)
    assert dataset.kind == "smiyc_anomaly_track" and dataset.names == ["validation0001"]
    assert first_values(dataset[0].label, 4) == [0, 1, 255, 255]

    obstacle = tmp_path / "obstacles"
    write_image(obstacle / "images" / "validation_1.webp")
    write_label(obstacle / "labels_masks" / "validation_1_labels_semantic.png", [1, 0])
    assert detect_kind(obstacle) == "smiyc_obstacle_track"  # from the .webp images
    sample = open_dataset("smiyc_obstacle_track", obstacle)[0]
    assert sample.image.shape == (H, W, 3) and tuple(sample.image[0, 0]) == RED_RGB
    assert DATASET_KINDS["smiyc_obstacle_track"].component_sizes == (50, 10)
    assert DATASET_KINDS["smiyc_anomaly_track"].component_sizes == (500, 100)

    write_label(obstacle / "labels_masks" / "validation_2_labels_semantic.png", [1])
    with pytest.raises(DatasetLayoutError, match=r"no image images/validation_2\.\(jpg\|webp\|png\) for validation_2"):
        open_dataset("smiyc_obstacle_track", obstacle)


def test_road_anomaly_released_and_flat_layouts(tmp_path):
    released = tmp_path / "RoadAnomaly"
    write_image(released / "frames" / "animals01.jpg")
    write_label(released / "frames" / "animals01.labels" / "labels_semantic.png", [0, 2, 1, 255])
    dataset = open_dataset("auto", released)
    assert dataset.kind == "road_anomaly" and dataset.names == ["animals01"]
    assert first_values(dataset[0].label, 4) == [0, 1, 255, 255]

    flat = tmp_path / "roadanomaly_copy"
    write_image(flat / "images" / "x.jpg")
    write_label(flat / "labels" / "x.png", [2, 0])
    assert detect_kind(flat) == "road_anomaly"
    assert first_values(open_dataset("road_anomaly", flat).read_label(0), 2) == [1, 0]

    with pytest.raises(DatasetLayoutError, match=r"missing folder frames/ \(or images/ and labels/\)"):
        open_dataset("road_anomaly", tmp_path)


def test_lost_and_found_label_ids(tmp_path):
    root = tmp_path / "LostAndFound"
    scene = "04_Maurener_Weg_8"
    name = f"{scene}_000000_000030"
    write_image(root / "leftImg8bit" / "test" / scene / f"{name}_leftImg8bit.png")
    write_label(root / "gtCoarse" / "test" / scene / f"{name}_gtCoarse_labelIds.png", [0, 1, 2, 31, 200, 201])
    dataset = open_dataset("auto", root)
    assert dataset.kind == "lost_and_found" and dataset.names == [name]
    # 0 unlabelled → void, 1 free space → in-distribution, 2..200 objects → anomaly, above → void
    assert first_values(dataset.read_label(0), 6) == [255, 0, 1, 1, 1, 255]
    with pytest.raises(DatasetLayoutError, match="missing folder leftImg8bit/train/; missing folder gtCoarse/train/"):
        open_dataset("lost_and_found", root, split="train")


def test_cityscapes_label_ids_and_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    name = "frankfurt_000000_000294"
    write_image(root / "leftImg8bit" / "val" / "frankfurt" / f"{name}_leftImg8bit.png")
    label_ids = root / "gtFine" / "val" / "frankfurt" / f"{name}_gtFine_labelIds.png"
    write_label(label_ids, [7, 26, 33, 0, 9, 6])
    dataset = open_dataset("auto", root)
    assert dataset.kind == "cityscapes"
    assert first_values(dataset[0].label, 6) == [0, 13, 18, 255, 255, 255]
    assert len(CITYSCAPES_ID_TO_TRAIN_ID) == 19 and sorted(CITYSCAPES_ID_TO_TRAIN_ID.values()) == list(range(19))
    # labelTrainIds, where present for every image, are used as stored
    write_label(label_ids.with_name(f"{name}_gtFine_labelTrainIds.png"), [5, 255])
    assert first_values(open_dataset("cityscapes", root).read_label(0), 2) == [5, 255]


def test_plain_folders_with_and_without_label_map(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "rgb" / "frame1.jpg")
    write_label(root / "masks" / "frame1.png", [0, 3, 9])
    as_stored = open_dataset("folders", root, image_dir="rgb", label_dir="masks")
    assert first_values(as_stored[0].label, 3) == [0, 3, 9]
    mapped = open_dataset("folders", root, image_dir="rgb", label_dir="masks", label_map={0: 0, 3: 1})
    assert first_values(mapped[0].label, 3) == [0, 1, 255]
    write_image(root / "images" / "a.png")
    write_label(root / "labels" / "a.png", [1])
    assert detect_kind(root) == "folders"


def test_missing_folders_reported_together_with_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        open_dataset("smiyc_anomaly_track", tmp_path)
    message = str(error.value)
    assert "missing folder images/; missing folder labels_masks/" in message
    assert "expected layout:" in message and "labels_masks/NAME_labels_semantic.png" in message
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        open_dataset("cityscapes", tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="cannot tell the dataset layout(.|\n)*smiyc_obstacle_track"):
        open_dataset("auto", tmp_path)


def test_missing_label_files_listed_in_one_error(tmp_path):
    root = tmp_path / "fs"
    for i in range(13):
        write_image(root / "original" / f"img{i:02d}.png")
    write_label(root / "labels" / "img00.png", [1])
    with pytest.raises(DatasetLayoutError) as error:
        open_dataset("fishyscapes_static", root)
    message = str(error.value)
    assert "no label labels/img01.png for img01" in message and "and 2 more" in message
    assert "img00" not in message.split("expected layout")[0]
    empty = tmp_path / "empty"
    (empty / "original").mkdir(parents=True)
    (empty / "labels").mkdir()
    with pytest.raises(DatasetLayoutError, match="found no samples"):
        open_dataset("fishyscapes_static", empty)


def test_bad_kind_option_and_label_file(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'coco'"):
        open_dataset("coco", tmp_path)
    with pytest.raises(ValueError, match=r"unsupported option\(s\) \['split'\]"):
        open_dataset("road_anomaly", tmp_path, split="val")
    colour = tmp_path / "colour.png"
    write_image(colour)
    with pytest.raises(ValueError, match="single-channel"):
        read_label(colour)
    wide = tmp_path / "wide.png"
    write_label(wide, [300, 1], dtype=np.uint16)
    with pytest.raises(ValueError, match="give a label_map"):
        read_label(wide)
    assert first_values(read_label(wide, {300: 1}), 3) == [1, 255, 255]


def test_real_road_anomaly_dev(roadanomaly_dev):
    dataset = open_dataset("auto", roadanomaly_dev)
    assert isinstance(dataset, LabelledImageDataset) and dataset.kind == "road_anomaly" and len(dataset) == 15
    raw = cv2.imread(str(dataset.files[0].label), cv2.IMREAD_UNCHANGED)
    name, image, label = dataset[0]
    assert name == dataset.files[0].image.stem
    assert image.shape == (720, 1280, 3) and label.shape == (720, 1280)
    np.testing.assert_array_equal(label, (raw == 2).astype(np.uint8))  # 0 normal, 2 anomaly → 1, no void
    assert 0 < label.mean() < 0.5


def test_rpl_validation_layout_pairs_by_stem_in_numeric_order(tmp_path):
    """The official RPL code's layout: images/N.ext + labels_masks/N.png, read by every anomaly kind."""
    root = tmp_path / "anomaly_val"
    sets = {"road_anomaly21": ("smiyc_anomaly_track", ".png"), "road_obstacle21": ("smiyc_obstacle_track", ".webp"),
            "fishyscapes_static": ("fishyscapes_static", ".jpg"), "fs_lost_and_found": ("fishyscapes_lost_and_found", ".png")}
    for folder, (kind, suffix) in sets.items():
        for name in ("10", "2", "1"):
            write_image(root / folder / "images" / f"{name}{suffix}")
            write_label(root / folder / "labels_masks" / f"{name}.png", [0, 1, 255, 9])
        assert detect_kind(root / folder) == kind, folder
        dataset = open_dataset("auto", root / folder)
        assert dataset.kind == kind and dataset.names == ["1", "2", "10"]
        assert first_values(dataset[2].label, 4) == [0, 1, 255, 255]
        assert dataset[0].image.shape == (H, W, 3)
    write_label(root / "road_anomaly21" / "labels_masks" / "11.png", [1])
    with pytest.raises(DatasetLayoutError, match=r"no image images/11\.\(jpg\|webp\|png\) for 11"):
        open_dataset("smiyc_anomaly_track", root / "road_anomaly21")


def test_real_anomaly_validation_sets(shared_dir):
    expected = {"road_anomaly21": ("smiyc_anomaly_track", 10, (720, 1280)),
                "road_obstacle21": ("smiyc_obstacle_track", 30, (1080, 1920)),
                "fishyscapes_static": ("fishyscapes_static", 30, (1024, 2048))}
    for folder, (kind, count, shape) in expected.items():
        dataset = open_dataset("auto", shared_dir / "data" / "anomaly_val" / folder)
        assert dataset.kind == kind and len(dataset) == count
        sample = dataset[1]
        assert sample.image.shape == shape + (3,) and sample.label.shape == shape
        assert set(np.unique(sample.label)) <= {0, 1, 255}
