"""Obstacles pasted where obstacles lie: on the frozen closed-set network's road pixels, standing on them,
scaled by perspective, optionally feathered and shadowed; the road masks that say where the road is."""

from pathlib import Path

import numpy as np
import pytest

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT
from rpl_perception.segmenter import AnomalySegmenter
from rpl_training.datasets import FrameInliers
from rpl_training.distributed import DistContext
from rpl_training.road_masks import RoadMasks
from rpl_training.run_state import prepare_road_masks
from rpl_training.sample_stream import IterationBatchSampler, build_dataset
from rpl_training.transforms import OutlierExposure, RoadPlacement, crop_around, paste_on_road
from rpl_training_testdata import small_config

H, W = 200, 300
HORIZON = 80


def _road_frame():
    """Grey frame; the road a trapezoid from row HORIZON (a point) widening to the bottom row."""
    image = np.full((H, W, 3), 100, np.uint8)
    road = np.zeros((H, W), np.uint8)
    for y in range(HORIZON, H):
        half = int((y - HORIZON) * 1.2)
        road[y, max(0, W // 2 - half): W // 2 + half + 1] = 1
    return image, np.zeros((H, W), np.uint8), road


def _object():
    """A 40×20 magenta object (mask 254) on a 60×40 background."""
    obj = np.zeros((60, 40, 3), np.uint8)
    mask = np.zeros((60, 40), np.uint8)
    obj[10:50, 10:30] = (230, 30, 200)
    mask[10:50, 10:30] = 254
    return obj, mask


def test_objects_stand_on_the_road_and_shrink_towards_the_horizon():
    image, label, road = _road_frame()
    obj, mask = _object()
    placement = RoadPlacement(share=1.0, height_at_bottom=(0.1, 0.3), min_height=4)
    ratios, pasted = [], 0
    for seed in range(60):
        out_image, out_label, box = paste_on_road(image, label, road, obj, mask, placement,
                                                  np.random.default_rng(seed))
        if box is None:
            assert out_label is label  # nothing pasted: the inputs come back
            continue
        pasted += 1
        y0, x0, y1, x1 = box
        rows, cols = np.nonzero(out_label == 254)
        assert rows.min() == y0 and rows.max() == y1 - 1 and cols.min() >= x0 and cols.max() < x1
        bottom = cols[rows == y1 - 1]
        assert road[y1 - 1, bottom].any()  # it stands on the road
        assert (out_image[out_label == 254] == (230, 30, 200)).all()  # hard edges: object colours only
        assert (out_image[out_label != 254] == 100).all()  # nothing else changed
        # height = f · H · (y − horizon) / (H − horizon), f in [0.1, 0.3]
        ratios.append((y1 - y0) / (H * (y1 - 1 - HORIZON) / (H - HORIZON)))
    assert pasted >= 40
    ratios = np.array(ratios)
    assert ratios.min() >= 0.1 - 0.02 and ratios.max() <= 0.3 + 0.02
    assert ratios.max() - ratios.min() > 0.1  # the size factor is drawn


def test_feasible_rows_always_place_and_a_robust_horizon_ignores_a_stray_blob():
    image, label, road = _road_frame()
    road[3, 140:160] = 1  # a stray "road" blob near the top (a segmenter error)
    obj, mask = _object()
    tall = dict(share=1.0, height_at_bottom=(0.2, 0.3), min_height=25)  # the far rows cannot hold it
    any_row, feasible = RoadPlacement(**tall), RoadPlacement(**tall, rows="feasible", horizon_quantile=0.01)
    placed = {"any": 0, "feasible": 0}
    ratios = []
    for seed in range(40):
        for name, placement in (("any", any_row), ("feasible", feasible)):
            _, out_label, box = paste_on_road(image, label, road, obj, mask, placement, np.random.default_rng(seed))
            if box is None:
                continue
            placed[name] += 1
            y0, _, y1, _ = box
            assert y1 - y0 >= 25
            if name == "feasible":
                assert road[y1 - 1, box[1]:box[3]].any()
                # the horizon is the trapezoid's (row 80), not the blob's (row 3)
                ratios.append((y1 - y0) / (H * (y1 - 1 - HORIZON) / (H - HORIZON)))
    assert placed["feasible"] == 40 and placed["any"] < 30
    assert min(ratios) >= 0.2 - 0.02 and max(ratios) <= 0.3 + 0.02


def test_no_road_no_object_or_too_small_pastes_nothing():
    image, label, road = _road_frame()
    obj, mask = _object()
    rng = np.random.default_rng(0)
    assert paste_on_road(image, label, np.zeros_like(road), obj, mask, RoadPlacement(), rng)[2] is None
    assert paste_on_road(image, label, road, obj, np.zeros_like(mask), RoadPlacement(), rng)[2] is None
    huge_minimum = RoadPlacement(height_at_bottom=(0.1, 0.1), min_height=H)
    assert all(paste_on_road(image, label, road, obj, mask, huge_minimum, np.random.default_rng(s))[2] is None
               for s in range(10))


def test_soft_edges_blend_and_shadows_darken_the_road_only():
    image, _, road = _road_frame()
    label = (road * 7).astype(np.uint8)  # the road's class 7, elsewhere 0: both must survive
    obj, mask = _object()
    feathered = RoadPlacement(share=1.0, height_at_bottom=(0.3, 0.3), soft_edge=1.5, shadow=0.8)
    unshaded = RoadPlacement(share=1.0, height_at_bottom=(0.3, 0.3), soft_edge=1.5)
    for seed in range(20):
        out_image, out_label, box = paste_on_road(image, label, road, obj, mask, feathered,
                                                  np.random.default_rng(seed))
        if box is not None:
            break
    plain_image, plain_label, plain_box = paste_on_road(image, label, road, obj, mask, unshaded,
                                                        np.random.default_rng(seed))
    assert plain_box == box and np.array_equal(plain_label, out_label)  # the shadow changes no label
    y0, x0, y1, x1 = box
    values = plain_image[..., 1].astype(int)  # green: 100 on the road, 30 in the object
    inside = out_label == 254
    assert (out_label[~inside] == label[~inside]).all()  # the outline and the shadow keep their labels
    blended = (values > 30) & (values < 100) & ~inside
    in_box = np.zeros_like(inside)
    in_box[y0:y1, x0:x1] = True
    assert (blended & in_box).any() and (blended & ~in_box).any()  # feathered also beyond the box's edges
    assert blended[y1, x0:x1].any()  # the contact edge is soft too, not only the concave parts
    darkening = plain_image.astype(int) - out_image.astype(int)
    assert (darkening >= 0).all() and (darkening[inside] == 0).all()  # darker, never on the object
    assert darkening[y1 - 1:y1 + 3, x0:x1].max() > 20  # the road at the contact row is darker
    assert darkening[road == 0].max() == 0 or (darkening[road == 0] > 0).sum() < (darkening[road > 0] > 0).sum()
    assert values[5, 5] == 100 and darkening[5, 5].max() == 0  # far from the object nothing changes


def test_crop_around_holds_the_box():
    image, label, _ = _road_frame()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        label[:] = 0
        label[150:170, 200:230] = 254
        crop_image, crop_label = crop_around(image, label, (150, 200, 170, 230), (64, 128), rng)
        assert crop_label.shape == (64, 128) and crop_image.shape == (64, 128, 3)
        assert (crop_label == 254).sum() == 20 * 30
    assert crop_around(image, label, (0, 0, 100, 10), (64, 128), np.random.default_rng(0)) is None


def test_outlier_exposure_pastes_on_the_road_only_when_asked():
    image, label, road = _road_frame()
    obj, mask = _object()
    usual = OutlierExposure(crop_size=(64, 128), pad_rgb=(0, 0, 0), scales=(0.5,))
    on_road = OutlierExposure(crop_size=(64, 128), pad_rgb=(0, 0, 0), scales=(0.5,),
                              road=RoadPlacement(share=1.0, height_at_bottom=(0.2, 0.3)))
    for seed in range(10):
        a = usual(image, label, obj, mask, np.random.default_rng(seed))
        b = usual(image, label, obj, mask, np.random.default_rng(seed), road=road)  # share 0: road unused
        assert all(np.array_equal(a[k], b[k]) for k in ("image", "label", "context"))
    rows_on_road, rows_usual = [], []
    stood = 0
    for seed in range(30):
        sample = on_road(image, label, obj, mask, np.random.default_rng(seed), road=road)
        assert sample["image"].shape == (64, 128, 3) and sample["pasted"]
        stood += sample["on_road"]
        rows_on_road.append(np.nonzero(sample["label"] == 254)[0].size)
        rows_usual.append(np.nonzero(usual(image, label, obj, mask, np.random.default_rng(seed))["label"] == 254)[0].size)
    assert all(n > 0 for n in rows_on_road)
    assert stood >= 20  # most draws find a place on the road; the rest fall back to the usual paste
    assert not usual(image, label, obj, mask, np.random.default_rng(0), road=road)["on_road"]
    assert rows_on_road != rows_usual  # the objects are placed and sized differently


def test_road_masks_are_the_segmenters_road_cached_once(tiny_data, tmp_path):
    frames = FrameInliers(tiny_data["frames"])
    masks = RoadMasks(frames, [(128, 64)], DEFAULT_CHECKPOINT, tmp_path / "cache", classes=[0])
    assert len(masks.missing()) == len(frames)
    assert masks.prepare(show_progress=False) == len(frames)
    assert masks.missing() == [] and masks.prepare(show_progress=False) == 0  # cached
    image = frames.read(0)[0]
    from rpl_perception.image import resize_rgb
    expected = AnomalySegmenter.from_pretrained(score="energy", network_size=(128, 64)).predict(
        resize_rgb(image, (128, 64))).labels == 0
    mask = masks.read(0, image)
    assert mask.shape == (64, 128) and mask.dtype == np.uint8
    assert np.array_equal(mask.astype(bool), expected)
    other = RoadMasks(frames, [(128, 64)], DEFAULT_CHECKPOINT, tmp_path / "cache", classes=[0, 1])
    assert other.folder != masks.folder and other.read(0, image) is None  # other classes, other cache
    # another RPL branch on the same closed-set network: the same masks
    import torch

    from rpl_perception.checkpoint import load_model, save_checkpoint

    network, meta = load_model(DEFAULT_CHECKPOINT)
    with torch.no_grad():
        for parameter in network.branch.parameters():
            parameter.add_(1.0)
    save_checkpoint(tmp_path / "retrained.safetensors", meta, network)
    retrained = RoadMasks(frames, [(128, 64)], tmp_path / "retrained.safetensors", tmp_path / "cache", classes=[0])
    assert retrained.folder == masks.folder and retrained.missing() == []
    with torch.no_grad():
        next(network.closed_set.parameters()).add_(1.0)
    save_checkpoint(tmp_path / "other_segmenter.safetensors", meta, network)
    assert RoadMasks(frames, [(128, 64)], tmp_path / "other_segmenter.safetensors", tmp_path / "cache",
                     classes=[0]).folder != masks.folder


def test_training_data_with_on_road_share(tiny_data, tmp_path):
    cfg = small_config(tiny_data, tmp_path / "run", "data.outlier.on_road.share=1.0",
                       f"data.outlier.on_road.cache_dir={tmp_path / 'masks'}", "data.outlier.on_road.classes=[0,1,10]",
                       "data.outlier.on_road.height_at_bottom=[0.2,0.4]")
    dataset = build_dataset(cfg["data"], (0.485, 0.456, 0.406), 0)
    dataset.road_masks = prepare_road_masks(cfg, dataset, DistContext())
    assert not dataset.road_masks.missing()
    samples = [dataset[k] for k in IterationBatchSampler(len(dataset), 2, 4, seed=0).keys(0)]
    assert all((s["label"] == 254).any() for s in samples)
    assert any(s["on_road"] for s in samples)  # the masks were read: objects stood on the road
    with pytest.raises(Exception, match="on_road.share"):
        small_config(tiny_data, tmp_path / "run", "data.outlier.on_road.share=2")


def test_road_masks_prepared_under_one_data_root_are_found_under_another(tiny_data, tmp_path):
    """Masks are named by the frame's path below its source's root: carried to a machine whose data lie
    elsewhere (scripts/train_gpu_long.py), they are reused, not computed again."""
    import shutil

    here = FrameInliers(tiny_data["frames"])
    moved_root = shutil.copytree(tiny_data["frames"], tmp_path / "elsewhere" / "frames")
    there = FrameInliers(moved_root)
    assert [here.describe(i) for i in range(len(here))] != [there.describe(i) for i in range(len(there))]
    masks = RoadMasks(here, [(128, 64)], DEFAULT_CHECKPOINT, tmp_path / "cache")
    assert masks.prepare(show_progress=False) == len(here)
    moved = RoadMasks(there, [(128, 64)], DEFAULT_CHECKPOINT, tmp_path / "cache")
    assert moved.missing() == [] and moved.prepare(show_progress=False) == 0
    assert [moved.path(i) for i in range(len(there))] == [masks.path(i) for i in range(len(here))]
    assert moved.frame_key(0) == Path(here.describe(0)).relative_to(tiny_data["frames"].parent).as_posix()
    assert moved.frame_key(0).startswith("frames/")  # the dataset folder's own name is part of it


def test_road_masks_of_two_sources_with_the_same_layout_do_not_share_files(tiny_data, tmp_path):
    """Two frame folders holding the same file names (and a video file root): every frame its own mask file."""
    import shutil

    import cv2

    from rpl_training.sample_stream import ConcatSources

    twin = FrameInliers(shutil.copytree(tiny_data["frames"], tmp_path / "other_camera"))
    video = tmp_path / "drive" / "clip.mp4"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 32))
    for value in (40, 120):
        writer.write(np.full((32, 64, 3), value, np.uint8))
    writer.release()
    sources = ConcatSources([FrameInliers(tiny_data["frames"]), twin, FrameInliers(video)])
    masks = RoadMasks(sources, [(128, 64)] * 3, DEFAULT_CHECKPOINT, tmp_path / "cache")
    keys = [masks.frame_key(i) for i in range(len(sources))]
    assert len(set(masks.path(i) for i in range(len(sources)))) == len(sources) == len(set(keys))
    assert keys[-2:] == ["clip.mp4#frame0", "clip.mp4#frame1"]
    assert {k.split("/")[0] for k in keys[:-2]} == {"frames", "other_camera"}
