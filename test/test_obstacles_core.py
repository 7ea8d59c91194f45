"""The ROS-free obstacle core: corridor, anomaly objects, ground projection, persistence.

The projection is checked against a synthetic scene with known geometry (synthetic_road.py): a flat
road and boxes rendered with a distorting pinhole camera 1.5 m over the ground, pitched 5° down.
"""

import functools
import math

import cv2
import numpy as np
import pytest

from rpl_perception.anomaly_objects import _column_extremes, find_anomaly_objects, project_objects
from rpl_perception.corridor import CorridorSettings, class_ids, corridor_prior, drivable_corridor, restrict_to_corridor
from rpl_perception.ground_projection import (
    CameraIntrinsics,
    CameraPose,
    GroundProjector,
    quaternion_from_rotation,
    rotation_from_quaternion,
)
from rpl_perception.labels import CITYSCAPES_CLASSES
from rpl_perception.obstacles import ObstacleSettings, confidence_image, find_obstacles
from rpl_perception.persistence import ObjectTracker, box_iou
from synthetic_road import HEIGHT_M, PITCH, SIZE, D, K, camera_from_level, render, synthetic_scene

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR = (CITYSCAPES_CLASSES.index(n) for n in (
    "road", "sidewalk", "building", "vegetation", "sky", "car"))


# -- corridor ------------------------------------------------------------------------------------

def street(h=240, w=320):
    """Sky on top, vegetation on both sides, a road trapezoid reaching the bottom edge."""
    labels = np.full((h, w), VEGETATION, np.uint8)
    labels[: h // 3] = SKY
    for y in range(h // 3, h):
        half = int((y - h // 3) / (h - h // 3) * w * 0.45) + 10
        labels[y, w // 2 - half: w // 2 + half] = ROAD
    return labels


def test_an_obstacle_on_the_road_is_inside_and_a_tree_beside_it_is_not():
    labels = street()
    labels[150:180, 150:170] = CAR  # an object standing on the road: a hole in it
    labels[100:230, 5:25] = VEGETATION  # a tree at the left edge, beside the road
    corridor = drivable_corridor(labels, CorridorSettings(classes=("road",), closing=0.0))
    assert corridor[150:180, 150:170].all()
    assert not corridor[100:230, 5:25].any()
    assert not corridor[:70].any()  # the sky
    assert corridor[239, 160]


def test_an_obstacle_cut_by_the_bottom_edge_is_a_hole_too():
    labels = street()
    labels[200:, 140:180] = CAR
    assert drivable_corridor(labels, CorridorSettings(classes=("road",), closing=0.0))[200:, 140:180].all()


def test_closing_bridges_thin_gaps_and_sidewalk_is_optional():
    labels = street()
    labels[120:, 100] = BUILDING  # a thin pole of something else through the road, to the bottom edge
    labels[80:240, 0:40] = SIDEWALK  # a sidewalk reaching the left edge
    without = drivable_corridor(labels, CorridorSettings(classes=("road",), closing=0.0))
    closed = drivable_corridor(labels, CorridorSettings(classes=("road",), closing=0.03))
    assert not without[200, 100] and closed[200, 100]
    assert not closed[200, 20]
    assert drivable_corridor(labels, CorridorSettings(classes=("road", "sidewalk")))[200, 20]


def test_the_corridor_is_computed_small_and_returned_at_the_labels_size():
    labels = cv2.resize(street(), (1920, 1080), interpolation=cv2.INTER_NEAREST)
    labels[700:800, 900:1000] = CAR
    corridor = drivable_corridor(labels, CorridorSettings(classes=("road",), work_width=320))
    assert corridor.shape == (1080, 1920)
    assert corridor[720:780, 920:980].all() and not corridor[:300].any()


def test_unknown_corridor_classes_are_refused_by_name():
    with pytest.raises(ValueError, match=r"\['lava'\] are unknown.*choose from road"):
        CorridorSettings(classes=("road", "lava"))
    assert class_ids(("road", "terrain")) == (0, 9)


def test_hard_and_soft_restriction():
    corridor = np.zeros((100, 100), bool)
    corridor[50:, 40:60] = True
    score = np.ones((100, 100), np.float32)
    score[0, 0] = -3.0
    hard = restrict_to_corridor(score, corridor)
    assert hard[60, 50] == 1.0 and hard[60, 0] == -3.0
    soft = corridor_prior(score, corridor, penalty=2.0, falloff=0.1)  # full penalty 10 px away
    assert soft[60, 50] == 1.0
    assert soft[60, 35] == pytest.approx(1.0 - 2.0 * 5 / 10, abs=0.05)
    assert soft[60, 0] == pytest.approx(-1.0)


# -- anomaly objects -----------------------------------------------------------------------------

def test_objects_have_box_area_scores_and_the_class_they_were_taken_for():
    score = np.zeros((120, 160), np.float32)
    labels = np.full((120, 160), ROAD, np.uint8)
    score[20:40, 30:60] = 2.0
    score[25:30, 40:45] = 5.0
    labels[20:40, 30:50] = CAR  # 400 of its 600 pixels
    score[80:100, 100:104] = 3.0  # 80 pixels: too small
    found = find_anomaly_objects(score, labels, threshold=1.0, min_area_px=100, merge_gap_px=0)
    assert len(found.objects) == 1
    obj = found.objects[0]
    assert obj.box == (30, 20, 60, 40) and obj.area_px == 600
    assert obj.max_score == 5.0 and obj.mean_score == pytest.approx((575 * 2 + 25 * 5) / 600)
    assert obj.mistaken_for == CAR
    assert found.ids[30, 40] == obj.index and found.ids[90, 101] == 0
    assert found.mask().sum() == 600


def test_objects_closer_than_the_merge_gap_are_one_and_the_region_clips():
    score = np.zeros((100, 100), np.float32)
    score[10:30, 10:30] = 1.0
    score[10:30, 33:50] = 1.0  # 3 px apart
    region = np.ones((100, 100), bool)
    region[:, 45:] = False
    labels = np.zeros((100, 100), np.uint8)
    apart = find_anomaly_objects(score, labels, 0.5, min_area_px=1, merge_gap_px=1)
    merged = find_anomaly_objects(score, labels, 0.5, region, min_area_px=1, merge_gap_px=2)
    assert len(apart.objects) == 2
    assert [o.box for o in merged.objects] == [(10, 10, 45, 30)]
    assert merged.objects[0].area_px == 400 + 20 * 12  # pixels are counted without the bridge


def test_the_mask_of_some_objects_after_others_were_dropped():
    score, labels = synthetic_scene([(-0.3, 0.3, 8.0), (2.0, 2.6, 15.0), (-3.0, -2.4, 55.0)])
    found = find_anomaly_objects(score, labels, 0.5, min_area_px=5)
    projected = project_objects(found, projector(max_range=40.0))  # the one at 55 m is dropped
    assert len(found.objects) == 3 and len(projected.objects) == 2
    (dropped,) = {o.index for o in found.objects} - {o.index for o in projected.objects}
    assert dropped not in projected.ids  # its pixels left the map
    for obj in projected.objects:
        mask = projected.mask([obj.index])
        assert mask.sum() == obj.area_px and not (mask & (projected.ids != obj.index)).any()
        np.testing.assert_array_equal(projected.mono8([obj.index], SIZE), mask * np.uint8(255))
    assert projected.mono8([o.index for o in projected.objects], (960, 540)).shape == (540, 960)


def test_no_object_and_bad_shapes():
    assert find_anomaly_objects(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8), 0.5).objects == []
    with pytest.raises(ValueError, match="one size"):
        find_anomaly_objects(np.zeros((8, 8)), np.zeros((8, 9), np.uint8), 0.5)


# -- ground projection against a synthetic scene -------------------------------------------------

@functools.lru_cache(maxsize=None)  # its per-pixel table is built once
def projector(max_range=60.0):
    return GroundProjector(CameraIntrinsics(*SIZE, K, D, "plumb_bob"), CameraPose(HEIGHT_M, PITCH), max_range)


def test_ground_pixels_project_back_to_their_points():
    ground = np.array([(x, HEIGHT_M, z) for x in (-4.0, 0.0, 3.0) for z in (4.0, 12.0, 30.0, 45.0)])
    points = projector().project(render(ground))
    expected = ground @ camera_from_level().T
    np.testing.assert_allclose(points, expected, rtol=2e-3, atol=2e-3)


def test_above_the_horizon_and_beyond_the_range_are_dropped():
    p = projector(max_range=40.0)
    pixels = np.vstack([render([(0.0, HEIGHT_M, 30.0), (0.0, HEIGHT_M, 50.0)]), [[960.0, 100.0]]])
    points = p.project(pixels)
    assert np.isfinite(points[0]).all()
    assert np.isnan(points[1]).all() and np.isnan(points[2]).all()  # 50 m > 40 m; sky
    table = p.table
    assert table.shape == (1080, 1920, 3) and np.isnan(table[:400]).all()


def test_fisheye_pixels_project_back_to_their_points():
    d = np.array([0.05, -0.01, 0.002, 0.0])  # equidistant (OpenCV fisheye) k1..k4
    ground = np.array([(x, HEIGHT_M, z) for x in (-3.0, 0.0, 2.0) for z in (3.0, 10.0, 25.0)])
    rvec, _ = cv2.Rodrigues(camera_from_level())
    pixels, _ = cv2.fisheye.projectPoints(ground.reshape(-1, 1, 3), rvec, np.zeros(3), K, d)
    p = GroundProjector(CameraIntrinsics(*SIZE, K, d, "equidistant"), CameraPose(HEIGHT_M, PITCH), 60.0)
    np.testing.assert_allclose(p.project(pixels.reshape(-1, 2)), ground @ camera_from_level().T, rtol=2e-3, atol=2e-3)


def test_roll_tilts_the_ground_plane():
    roll = math.radians(4.0)
    p = GroundProjector(CameraIntrinsics(640, 480, [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]]),
                        CameraPose(1.2, 0.0, roll), 100.0)
    pixels = np.array([[100.0, 400.0], [320.0, 300.0], [600.0, 350.0]])
    points = p.project(pixels)
    down = np.array([math.sin(roll), math.cos(roll), 0.0])  # gravity in the optical frame
    np.testing.assert_allclose(points @ down, 1.2, rtol=1e-9)
    np.testing.assert_allclose(points[:, :2] / points[:, 2:] * 500 + [319.5, 239.5], pixels, atol=1e-6)


def test_the_pose_from_a_ground_frame_transform_whatever_its_yaw():
    """A TF transform base_footprint <- optical frame (x forward, y left, z up; any yaw, through a
    quaternion as TF carries it) gives back the height, pitch and roll it was made from."""
    level_to_base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    rng = np.random.default_rng(3)
    for _ in range(50):
        pose = CameraPose(rng.uniform(0.3, 3.0), rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5))
        yaw = rng.uniform(-math.pi, math.pi)
        turn = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        rotation = turn @ level_to_base @ pose.level_from_camera()
        again = rotation_from_quaternion(*quaternion_from_rotation(rotation))
        np.testing.assert_allclose(again, rotation, atol=1e-12)
        found = CameraPose.from_ground_transform(again, pose.height_m)
        assert (found.height_m, found.pitch_rad, found.roll_rad) == pytest.approx(
            (pose.height_m, pose.pitch_rad, pose.roll_rad), abs=1e-9)
    # a camera looking 10° down with its right side 3° lower, facing the vehicle's left side
    level = CameraPose(1.4, math.radians(10), math.radians(3)).level_from_camera()
    left = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) @ np.diag([1, -1, 1]) @ level_to_base @ level  # yaw 90°
    found = CameraPose.from_ground_transform(left, 1.4)
    assert (math.degrees(found.pitch_rad), math.degrees(found.roll_rad)) == pytest.approx((10, 3))
    with pytest.raises(ValueError, match="must be > 0 m"):
        CameraPose.from_ground_transform(rotation, -0.2)  # the optical centre under the ground


@pytest.mark.parametrize("x0,x1,z0", [(-0.3, 0.3, 5.0), (1.0, 1.8, 10.0), (-2.5, -1.5, 20.0),
                                      (-0.4, 0.4, 25.0), (0.5, 1.5, 30.0)])
def test_object_distance_within_five_percent_to_30_m(x0, x1, z0):
    score, labels = synthetic_scene([(x0, x1, z0)])
    found = project_objects(find_anomaly_objects(score, labels, 0.5, min_area_px=20), projector())
    assert len(found.objects) == 1
    ground = found.objects[0].ground
    true_distance = math.hypot(0.0 if x0 < 0 < x1 else min(abs(x0), abs(x1)), z0)
    assert abs(ground.distance_m - true_distance) <= 0.05 * true_distance
    assert ground.width_m == pytest.approx(x1 - x0, rel=0.15)
    assert ground.height_m == pytest.approx(0.5, rel=0.25)
    assert found.objects[0].mistaken_for == CAR


def test_the_whole_pipeline_on_the_synthetic_scene():
    score, labels = synthetic_scene([(-0.3, 0.3, 8.0), (1.0, 1.6, 15.0)])
    obstacles = find_obstacles(score, labels, 0.5, ObstacleSettings(min_area_px=100, min_area_m2=0.05), projector())
    distances = sorted(o.ground.distance_m for o in obstacles.objects.objects)
    assert distances == pytest.approx([8.0, math.hypot(1.0, 15.0)], rel=0.05)
    # boxes in camera pixels although the work copy is half size
    near = min(obstacles.objects.objects, key=lambda o: o.ground.distance_m)
    rows, cols = np.nonzero(score > 0.5)
    on_it = (cols > 900) & (cols < 1020)
    assert near.box[3] == pytest.approx(rows[on_it].max() + 1, abs=3)
    assert obstacles.scale == 0.5 and obstacles.corridor.shape == (540, 960)
    # the obstacle mask at the camera size, from the half-size map and the camera-size boxes
    indices = [o.index for o in obstacles.objects.objects]
    expected = cv2.resize(obstacles.objects.mask(indices).view(np.uint8) * np.uint8(255), SIZE,
                          interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(obstacles.objects.mono8(indices, SIZE), expected)
    assert ((expected > 0) == (score > 0.5)).mean() > 0.999


def test_a_higher_min_area_in_square_metres_drops_small_footprints():
    score, labels = synthetic_scene([(-0.3, 0.3, 8.0)])
    found = find_anomaly_objects(score, labels, 0.5, min_area_px=20)
    assert len(project_objects(found, projector(), min_area_m2=0.01).objects) == 1
    assert project_objects(found, projector(), min_area_m2=50.0).objects == []


def test_the_lowest_and_highest_pixel_of_each_column_of_each_object():
    ids = np.zeros((10, 6), np.int32)
    ids[[1, 7], 3] = 2
    ids[[2, 9, 5], 4] = 2
    ids[4:6, 1] = 1
    owner, columns, bottom, top = _column_extremes(ids)
    assert owner.tolist() == [1, 2, 2] and columns.tolist() == [1, 3, 4]
    assert bottom.tolist() == [5, 7, 9] and top.tolist() == [4, 1, 2]


def test_intrinsics_scale_and_refuse_what_they_cannot_use():
    scaled = CameraIntrinsics(*SIZE, K, D).scaled(960, 540)
    assert scaled.k[0, 0] == 500.0 and scaled.k[0, 2] == pytest.approx(479.5)
    with pytest.raises(ValueError, match="uncalibrated"):
        CameraIntrinsics(640, 480, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="'fancy' is not supported"):
        CameraIntrinsics(640, 480, K, D, "fancy")
    with pytest.raises(ValueError, match="height over the ground"):
        CameraPose(0.0)


def test_confidence_maps_the_threshold_to_128():
    score = np.array([-10.0, -4.0, -2.0, -1.999, 0.0, 5.0], np.float32)
    assert confidence_image(score, -2.0, (-4.0, 0.0)).tolist() == [0, 0, 127, 128, 255, 255]
    assert confidence_image(np.zeros((1, 0), np.float32), -2.0, (-4.0, 0.0)).shape == (1, 0)  # no objects


def test_confidence_follows_its_piecewise_linear_definition_on_a_camera_frame():
    """1920×1080 random scores: display minimum → 0, threshold → 127 / 128, maximum → 255, linear between
    (rounded; at most 1 off where float rounding meets .5), and the threshold side exact."""
    rng = np.random.default_rng(5)
    score = rng.normal(-5.0, 3.0, (1080, 1920)).astype(np.float32)
    score[0, :3] = [-5.8, -9.0, -1.0]  # exactly the threshold and the display ends
    threshold, low, high = -5.8, -9.0, -1.0
    clipped = np.clip(score.astype(np.float64), low, high)
    expected = np.where(score > threshold, 128 + 127 * (clipped - threshold) / (high - threshold),
                        127 * (clipped - low) / (threshold - low))
    confidence = confidence_image(score, threshold, (low, high))
    assert confidence.shape == score.shape and confidence.dtype == np.uint8
    assert np.abs(confidence - np.rint(expected)).max() <= 1
    assert (confidence == np.rint(expected)).mean() > 0.999
    assert confidence[0, :3].tolist() == [127, 0, 255]
    assert ((confidence >= 128) == (score > threshold)).all()


# -- persistence ---------------------------------------------------------------------------------

class Box:
    def __init__(self, *box):
        self.box = box


def test_an_object_is_published_after_k_of_n_frames_with_a_stable_id():
    tracker = ObjectTracker(k=2, n=3, min_iou=0.3)
    steady = lambda dx: Box(10 + dx, 10, 50 + dx, 40)  # noqa: E731 - moves slowly
    assert tracker.update([steady(0), Box(200, 200, 220, 210)]) == []
    first = tracker.update([steady(2)])
    assert [i for i, _ in first] == [1]
    assert tracker.update([]) == []  # missed once: still 2 of 3, not seen now
    assert [i for i, _ in tracker.update([steady(4)])] == [1]
    assert [i for i, _ in tracker.update([steady(6), Box(200, 200, 220, 210)])] == [1]


def test_one_frame_flicker_is_never_published_and_k1_passes_all():
    tracker = ObjectTracker(k=2, n=4)
    published = sum(len(tracker.update([Box(20 * i, 0, 20 * i + 10, 10)])) for i in range(10))
    assert published == 0
    passthrough = ObjectTracker(k=1, n=1)
    assert [i for i, _ in passthrough.update([Box(0, 0, 5, 5), Box(10, 0, 15, 5)])] == [1, 2]
    assert [i for i, _ in passthrough.update([Box(0, 0, 5, 5)])] == [1]


def test_a_track_is_forgotten_after_n_misses():
    tracker = ObjectTracker(k=1, n=2)
    assert [i for i, _ in tracker.update([Box(0, 0, 10, 10)])] == [1]
    tracker.update([])
    tracker.update([])
    assert [i for i, _ in tracker.update([Box(0, 0, 10, 10)])] == [2]
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        ObjectTracker(k=3, n=2)
