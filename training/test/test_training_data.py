"""Training data: outlier exposure, the COCO filter, dataset layouts, bad files, the sample stream."""

import cv2
import numpy as np
import pytest
import torch

from rpl_training.datasets import (
    CityscapesInliers,
    CocoOutliers,
    CutoutOutliers,
    DatasetLayoutError,
    FrameInliers,
    UnreadableImage,
    read_image,
)
from rpl_training.sample_stream import IterationBatchSampler, build_dataset, collate
from rpl_training.transforms import OutlierExposure, object_bbox, pad_center_crop
from rpl_training_testdata import (
    make_cityscapes,
    make_frames,
    polygon,
    rle,
    small_config,
    uncompressed_rle,
    write_coco,
    write_rgb,
)

PAD = (124, 116, 104)  # round(255 · ImageNet mean)


def _object(h=40, w=50):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (20, 18), 11, 254, -1)
    mask[30:36, 5:45] = 254
    mask[0:4, 40:50] = 255  # void (an excluded object) is never pasted
    return image, mask


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_outlier_exposure_pastes_exactly_the_object_pixels(scale):
    rng = np.random.default_rng(0)
    inlier = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    label = rng.integers(0, 19, size=(64, 96)).astype(np.uint8)
    label[:5] = 255
    obj_image, obj_mask = _object()
    oe = OutlierExposure(crop_size=(64, 96), pad_rgb=PAD, flip_prob=0.0, scales=[scale])
    sample = oe(inlier, label, obj_image, obj_mask, np.random.default_rng(7))

    scaled_mask = obj_mask if scale == 1.0 else cv2.resize(obj_mask, (25, 20), interpolation=cv2.INTER_NEAREST)
    scaled_image = obj_image if scale == 1.0 else cv2.resize(obj_image, (25, 20), interpolation=cv2.INTER_LINEAR)
    pasted = sample["label"] == 254
    assert sample["pasted"] and pasted.sum() == (scaled_mask == 254).sum()
    # the pasted region is the object's mask inside its bounding box, moved as a whole
    y0, x0, y1, x1 = object_bbox(sample["label"])
    oy0, ox0, oy1, ox1 = object_bbox(scaled_mask)
    assert (y1 - y0, x1 - x0) == (oy1 - oy0, ox1 - ox0)
    np.testing.assert_array_equal(pasted[y0:y1, x0:x1], scaled_mask[oy0:oy1, ox0:ox1] == 254)
    np.testing.assert_array_equal(sample["image"][y0:y1, x0:x1][pasted[y0:y1, x0:x1]],
                                  scaled_image[oy0:oy1, ox0:ox1][scaled_mask[oy0:oy1, ox0:ox1] == 254])
    # everything else is the inlier crop, untouched
    np.testing.assert_array_equal(sample["image"][~pasted], inlier[~pasted])
    np.testing.assert_array_equal(sample["label"][~pasted], label[~pasted])
    # context: the unscaled object image padded to the crop, labels 0 / 254 / 255
    context, context_label = pad_center_crop(obj_image, obj_mask, (64, 96), PAD)
    np.testing.assert_array_equal(sample["context"], context)
    np.testing.assert_array_equal(sample["context_label"], context_label)
    assert set(np.unique(sample["context_label"])) == {0, 254, 255}
    assert (sample["context"][:12] == PAD).all() and (sample["context_label"][:12] == 255).all()


def test_inlier_crop_pads_with_the_mean_colour_and_void():
    oe = OutlierExposure(crop_size=(64, 128), pad_rgb=PAD, flip_prob=0.0, paste_prob=0.0)
    image = np.full((40, 100, 3), 9, np.uint8)
    sample = oe(image, np.zeros((40, 100), np.uint8), *_object(), np.random.default_rng(0))
    assert sample["image"].shape == (64, 128, 3) and not sample["pasted"]
    valid = sample["label"] != 255
    assert valid.sum() == 40 * 100 and (sample["label"][valid] == 0).all()
    assert (sample["image"][valid] == 9).all() and (sample["image"][~valid] == PAD).all()
    # centred: 12 rows above, 12 below; 14 columns left and right
    assert valid[12:52, 14:114].all()


def test_object_augmentation_and_relative_scale():
    obj_image, obj_mask = _object()
    oe = OutlierExposure(crop_size=(64, 96), pad_rgb=PAD, scales=[1.0], relative_scale=0.5,
                         object_flip_prob=1.0, object_colour_jitter=0.5)
    _, mask, context, context_label = oe.outlier(obj_image, obj_mask, np.random.default_rng(1))
    small = cv2.resize(obj_mask, (25, 20), interpolation=cv2.INTER_NEAREST)[:, ::-1]
    assert (mask == 254).sum() == (small == 254).sum()
    expected_label = pad_center_crop(np.zeros((20, 25, 3), np.uint8), np.ascontiguousarray(small), (64, 96))[1]
    np.testing.assert_array_equal(context_label, expected_label)
    unjittered = cv2.resize(obj_image, (25, 20), interpolation=cv2.INTER_LINEAR)[:, ::-1]
    assert not np.array_equal(context[22:42, 35:60], unjittered)


def _filter_json(root):
    """Image records only matter for filtering: no image files are written."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w}
              for i, h, w in [(1, 500, 600), (2, 500, 600), (3, 479, 640), (4, 480, 480), (5, 500, 600),
                              (6, 500, 600), (7, 500, 600)]]
    bear = np.zeros((480, 480), bool)
    bear[100:200, 150:300] = True
    book = np.zeros((480, 480), bool)
    book[300:320, 10:400] = True
    car = np.zeros((500, 600), bool)
    car[0:50, 0:50] = True
    annotations = [
        {"image_id": 1, "category_id": 18, "segmentation": polygon(100, 100, 200, 150)},  # dog
        {"image_id": 2, "category_id": 18, "segmentation": polygon(100, 100, 200, 150)},  # dog
        {"image_id": 2, "category_id": 1, "segmentation": polygon(150, 120, 300, 300)},  # + person
        {"image_id": 3, "category_id": 18, "segmentation": polygon(0, 0, 10, 10)},  # too small (479 px)
        {"image_id": 4, "category_id": 88, "segmentation": rle(bear)},  # teddy bear, 480 px: kept
        {"image_id": 4, "category_id": 84, "segmentation": uncompressed_rle(book), "iscrowd": 1},  # crowd books
        {"image_id": 5, "category_id": 18, "segmentation": polygon(100, 100, 200, 150)},  # dog
        {"image_id": 5, "category_id": 3, "segmentation": uncompressed_rle(car), "iscrowd": 1},  # + crowd of cars
        {"image_id": 7, "category_id": 1, "segmentation": polygon(0, 0, 20, 20)},  # only a person
    ]  # image 6: no annotation at all
    return write_coco(root, images, annotations, write_images=False)


def test_coco_class_filter_drops_the_right_images(tmp_path):
    root = _filter_json(tmp_path / "coco")
    image_level = CocoOutliers(root, filter="image")
    assert image_level.image_ids == [1, 4, 6]  # 6 has no annotation: kept as the official script does
    object_level = CocoOutliers(root, filter="object")
    assert object_level.image_ids == [1, 2, 4, 5]
    assert CocoOutliers(root, filter="object", max_images=2, seed=0).image_ids in (
        [1, 2], [1, 4], [1, 5], [2, 4], [2, 5], [4, 5])
    with pytest.raises(ValueError, match="'image' or 'object'"):
        CocoOutliers(root, filter="pixels")


def test_coco_masks_union_of_instances_crowd_included(tmp_path):
    root = _filter_json(tmp_path / "coco")
    coco = CocoOutliers(root, filter="object")
    mask = coco.mask(coco.image_ids.index(4))  # teddy bear (RLE) + crowd of books (uncompressed RLE)
    expected = np.zeros((480, 480), np.uint8)
    expected[100:200, 150:300] = 254
    expected[300:320, 10:400] = 254
    np.testing.assert_array_equal(mask, expected)
    person_and_dog = coco.mask(coco.image_ids.index(2))  # object filter: the person is void, also over the dog
    assert set(np.unique(person_and_dog)) == {0, 254, 255}
    assert (person_and_dog[125:295, 155:295] == 255).all() and (person_and_dog[105:118, 105:145] == 254).all()


def test_real_coco_subset_filters(shared_dir):
    root = shared_dir / "data" / "coco_subset"
    image_level = CocoOutliers(root, filter="image")
    assert len(image_level) == 10  # as its README states for the official filter
    object_level = CocoOutliers(root, filter="object")
    assert len(object_level) > len(image_level)
    assert set(image_level.image_ids) - {508} <= set(object_level.image_ids)  # 508: no objects at all
    image, mask = image_level.read(0)
    assert image.shape[:2] == mask.shape and min(mask.shape) >= 480
    assert set(np.unique(mask)) == {0, 254}
    empty = image_level.image_ids.index(508)  # no annotation: all background, as the official script
    assert not image_level.mask(empty).any()


def test_missing_datasets_give_one_error_listing_everything(tmp_path, tiny_data):
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    cfg = small_config(tiny_data, tmp_path / "run", f"data.inlier.root={tmp_path / 'nowhere'}",
                       f"data.outlier.root={tmp_path / 'coco'}")
    with pytest.raises(DatasetLayoutError) as info:
        build_dataset(cfg["data"], (0.5, 0.5, 0.5), 0)
    message = str(info.value)
    assert "inlier data (cityscapes)" in message and "leftImg8bit/SPLIT/CITY" in message
    assert "outlier data (coco)" in message and "missing annotation file annotations/instances_train2017.json" \
        in message and "SPLIT" not in message.split("outlier data")[1]


def test_cityscapes_label_ids_are_converted(tmp_path):
    root = make_cityscapes(tmp_path / "cs", count=2, label_file="labelIds")
    image, label = CityscapesInliers(root).read(0)
    assert image.shape == (96, 160, 3)
    assert set(np.unique(label)) == {10, 0, 255}  # sky 23 → 10, road 7 → 0, unlabelled 0 → void


def test_unreadable_and_truncated_files_are_skipped(tmp_path):
    root = make_frames(tmp_path / "frames", count=3)
    files = sorted((root / "drive").glob("*.jpg"))
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "drive" / "frame100.png").write_bytes(b"not an image")
    frames = FrameInliers(root)
    assert len(frames) == 4
    with pytest.raises(UnreadableImage, match="truncated JPEG"):
        frames.read(1)
    with pytest.raises(UnreadableImage, match="not a decodable image"):
        read_image(root / "drive" / "frame100.png")


def test_frames_from_videos_with_a_stride(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 32))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((32, 64, 3), i * 20, np.uint8))
    writer.release()
    write_rgb(tmp_path / "still.png", np.zeros((32, 64, 3), np.uint8))
    frames = FrameInliers(tmp_path, video_stride=3)
    assert [frames.describe(i).rsplit("#", 1)[-1] for i in range(1, len(frames))] == \
        ["frame0", "frame3", "frame6", "frame9"]
    image, label = frames.read(3)  # frame 6
    assert image.shape == (32, 64, 3) and not label.any()
    assert abs(float(image.mean()) - 120) < 6  # JPEG kept in memory, grey level 6 · 20
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no image or video files"):
        FrameInliers(tmp_path / "empty")


def test_real_udacity_video_frames(shared_dir):
    video = shared_dir / "data" / "driving_udacity" / "videos" / "laneline_solidWhiteRight.mp4"
    frames = FrameInliers(video, video_stride=5)
    assert len(frames) == 45  # 221 frames, every 5th
    image, _ = frames.read(44)
    assert image.shape == (540, 960, 3)


def test_cutouts_rgba_and_pairs(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[5:10, 5:20, 3] = 255
    (tmp_path / "rgba").mkdir()
    cv2.imwrite(str(tmp_path / "rgba" / "a.png"), rgba)
    image, mask = CutoutOutliers(tmp_path / "rgba").read(0)
    assert image.shape == (20, 30, 3) and (mask == 254).sum() == 75 and set(np.unique(mask)) == {0, 254}
    write_rgb(tmp_path / "pairs" / "images" / "b.jpg", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(DatasetLayoutError, match="missing folder masks/"):
        CutoutOutliers(tmp_path / "pairs")


def test_dataset_skips_bad_files_and_reports_them(tmp_path, tiny_data):
    root = make_frames(tmp_path / "frames", count=3)
    bad = sorted((root / "drive").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    cfg = small_config(tiny_data, tmp_path / "run", "data.inlier.kind=frames", f"data.inlier.root={root}")
    dataset = build_dataset(cfg["data"], (0.485, 0.456, 0.406), 0)
    sample = dataset[(0, 0, 0)]
    assert len(sample["skipped"]) == 1 and str(bad) in sample["skipped"][0]
    assert sample["image"].shape == (64, 128, 3)


def test_sample_stream_is_deterministic_and_split_over_processes(tiny_data, tmp_path):
    cfg = small_config(tiny_data, tmp_path / "run", "train.batch_size=4")
    dataset = build_dataset(cfg["data"], (0.485, 0.456, 0.406), 0)
    whole = IterationBatchSampler(len(dataset), 4, total=6, seed=0)
    shares = [IterationBatchSampler(len(dataset), 4, total=6, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert whole.iterations_per_epoch == 1
    for it in range(6):
        assert whole.keys(it) == shares[0].keys(it) + shares[1].keys(it)
        assert sorted(k.index for k in whole.keys(it)) == [0, 1, 2, 3]  # one epoch = each image once
    assert [k.index for k in whole.keys(0)] != [k.index for k in whole.keys(1)]  # reshuffled per epoch
    resumed = IterationBatchSampler(len(dataset), 4, total=6, seed=0, start=4)
    assert list(resumed) == [whole.keys(4), whole.keys(5)]
    a, b = collate([dataset[k] for k in whole.keys(2)]), collate([dataset[k] for k in whole.keys(2)])
    for key in ("image", "label", "context", "context_label"):
        assert a[key].dtype == torch.uint8 and torch.equal(a[key], b[key])
    assert a["image"].shape == (4, 64, 128, 3) and a["label"].shape == (4, 64, 128)
    with pytest.raises(ValueError, match="divisible"):
        IterationBatchSampler(len(dataset), 3, total=1, seed=0, world_size=2)
