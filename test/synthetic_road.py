"""A synthetic scene with known geometry: a flat road and boxes standing on it, rendered with a
distorting pinhole camera 1.5 m over the ground, pitched 5° down (1920×1080, or scaled down).

The camera pose is written out here, independently of rpl_perception.ground_projection: a ground
point (X, h, Z) of the level frame (x right, y down, z forward) is at (X, h cos - Z sin, h sin + Z cos)
in the optical frame.
"""

import math

import cv2
import numpy as np

from rpl_perception.labels import CITYSCAPES_CLASSES

HEIGHT_M, PITCH = 1.5, math.radians(5.0)
K = np.array([[1000.0, 0, 959.5], [0, 1000.0, 539.5], [0, 0, 1]])
D = np.array([-0.12, 0.03, 0.001, -0.0005, 0.0])  # plumb_bob: barrel distortion
SIZE = (1920, 1080)
ROAD, SKY, CAR = (CITYSCAPES_CLASSES.index(n) for n in ("road", "sky", "car"))


def scaled_k(factor):
    k = K.copy()
    k[:2] *= factor
    k[:2, 2] = (K[:2, 2] + 0.5) * factor - 0.5
    k[2, 2] = 1.0
    return k


def camera_from_level(pitch=PITCH):
    c, s = math.cos(pitch), math.sin(pitch)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def render(points_level, factor=1.0):
    """Level-frame points → distorted pixels of the synthetic camera (``factor``: image scale)."""
    rvec, _ = cv2.Rodrigues(camera_from_level())
    pixels, _ = cv2.projectPoints(np.asarray(points_level, np.float64), rvec, np.zeros(3), scaled_k(factor), D)
    return pixels.reshape(-1, 2)


def box_corners(x0, x1, z0, depth=0.4, height=0.5):
    return [(x, HEIGHT_M - dy, z) for x in (x0, x1) for z in (z0, z0 + depth) for dy in (0.0, height)]


def synthetic_scene(boxes, factor=1.0):
    """(score, labels): score 1 on the rendered boxes (x0, x1, z0), 0 elsewhere; road labels below
    the horizon, sky above, car under the boxes."""
    size = (round(SIZE[0] * factor), round(SIZE[1] * factor))
    score = np.zeros(size[::-1], np.float32)
    labels = np.full(size[::-1], SKY, np.uint8)
    labels[round(430 * factor):] = ROAD
    for x0, x1, z0 in boxes:
        hull = cv2.convexHull(render(box_corners(x0, x1, z0), factor).astype(np.float32))
        cv2.fillConvexPoly(score, np.round(hull * 16).astype(np.int32), 1.0, lineType=cv2.LINE_8, shift=4)
    labels[score > 0] = CAR
    return score, labels
