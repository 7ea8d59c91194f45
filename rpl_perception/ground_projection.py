"""Monocular ground projection (inverse perspective mapping) over a flat ground plane.

A pixel's ray (undistorted with OpenCV from the camera's ``K`` and ``D``, as ``sensor_msgs/CameraInfo``
gives them) is turned into the *level* frame — x right, y down along gravity, z forward and horizontal
— by the camera's roll (about its optical axis) and pitch (positive: looking down), and cut with the
ground plane ``y = height``. Rays at or above the horizon and points beyond ``max_range_m`` get NaN:
they are dropped, never projected to infinity. Points are returned in the camera's optical frame
(x right, y down, z forward), the frame of the image's header, so a costmap transforms them with TF.

Only points on the ground are right: the pixels of a standing object above its contact line land
behind it. The contact line (the lowest pixel of each column) is
where a standing object meets the ground (:mod:`.anomaly_objects`).
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple

import cv2
import numpy as np

__all__ = ["DISTORTION_MODELS", "CameraIntrinsics", "CameraPose", "GroundProjector", "rotation_from_quaternion",
           "quaternion_from_rotation"]

#: CameraInfo distortion models this module undistorts (plumb_bob / rational_polynomial: OpenCV's
#: k1 k2 p1 p2 [k3 …]; equidistant: OpenCV's fisheye k1 … k4)
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant", "")


@dataclass(frozen=True)
class CameraIntrinsics:
    width: int
    height: int
    k: np.ndarray  # 3×3
    d: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model: str = "plumb_bob"

    def __post_init__(self):
        k = np.asarray(self.k, np.float64).reshape(3, 3)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "d", np.asarray(self.d, np.float64).ravel())
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive; got {self.width}×{self.height}")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"camera matrix K has no positive focal lengths (fx {k[0, 0]}, fy {k[1, 1]}): "
                             "is the camera uncalibrated (CameraInfo K all zero)?")
        if self.model not in DISTORTION_MODELS:
            raise ValueError(f"distortion model {self.model!r} is not supported; supported: "
                             f"{', '.join(m for m in DISTORTION_MODELS if m)}")
        if self.model == "equidistant" and self.d.size != 4:
            raise ValueError(f"the equidistant model takes 4 coefficients; got {self.d.size}")

    @classmethod
    def from_camera_info(cls, info) -> "CameraIntrinsics":
        """From a ``sensor_msgs/CameraInfo`` (or anything with its fields)."""
        return cls(int(info.width), int(info.height), np.asarray(info.k), np.asarray(info.d),
                   str(info.distortion_model))

    def scaled(self, width: int, height: int) -> "CameraIntrinsics":
        """The same camera for an image of another size (binning, a resized copy): K scaled, D kept."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        k = self.k.copy()
        k[0, 0] *= sx
        k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5  # pixel centres stay pixel centres
        k[1, 1] *= sy
        k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
        return CameraIntrinsics(width, height, k, self.d, self.model)

    def normalised_rays(self, pixels: np.ndarray) -> np.ndarray:
        """N×2 pixel coordinates → N×3 undistorted rays (x, y, 1) in the optical frame."""
        points = np.ascontiguousarray(pixels, np.float64).reshape(-1, 1, 2)
        if self.model == "equidistant":
            undistorted = cv2.fisheye.undistortPoints(points, self.k, self.d)
        elif self.d.size and np.any(self.d):
            undistorted = cv2.undistortPoints(points, self.k, self.d)
        else:
            undistorted = (points - self.k[:2, 2]) / np.diag(self.k)[:2]
        xy = undistorted.reshape(-1, 2)
        return np.column_stack([xy, np.ones(len(xy))])


@dataclass(frozen=True)
class CameraPose:
    """The camera over the ground: optical centre ``height_m`` above it, ``pitch_rad`` down from
    horizontal (positive: looking down), ``roll_rad`` about the optical axis (positive: the camera's
    right side lower, a clockwise turn seen from behind the camera)."""
    height_m: float
    pitch_rad: float = 0.0
    roll_rad: float = 0.0

    def __post_init__(self):
        if not np.isfinite(self.height_m) or self.height_m <= 0:
            raise ValueError(f"camera height over the ground must be > 0 m; got {self.height_m}")
        if abs(self.pitch_rad) >= np.pi / 2 or abs(self.roll_rad) >= np.pi / 2:
            raise ValueError(f"camera pitch and roll must be within ±90°; got {self.pitch_rad}, {self.roll_rad} rad")

    @classmethod
    def from_ground_transform(cls, ground_from_camera: np.ndarray, height_m: float) -> "CameraPose":
        """The pose from a transform into a ground frame (its x-y plane on the ground, z up, e.g. ROS's
        ``base_footprint``): ``ground_from_camera`` the 3×3 rotation of optical-frame vectors into it,
        ``height_m`` the optical centre's z there. The ground frame's yaw does not matter."""
        down = -np.asarray(ground_from_camera, np.float64).reshape(3, 3)[2]  # gravity in the optical frame
        down = down / np.linalg.norm(down)
        # the level frame's y row of level_from_camera is (cos p · sin r, cos p · cos r, sin p)
        return cls(float(height_m), float(np.arcsin(np.clip(down[2], -1.0, 1.0))),
                   float(np.arctan2(down[0], down[1])))

    def level_from_camera(self) -> np.ndarray:
        """3×3 rotation taking optical-frame vectors into the level frame."""
        cp, sp = np.cos(self.pitch_rad), np.sin(self.pitch_rad)
        cr, sr = np.cos(self.roll_rad), np.sin(self.roll_rad)
        pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])  # optical axis → (0, sin, cos): down-forward
        roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return pitch @ roll


def rotation_from_quaternion(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3×3 rotation of a unit quaternion (ROS's order: x, y, z, w; normalised here)."""
    q = np.array([w, x, y, z], np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def quaternion_from_rotation(rotation: np.ndarray) -> Tuple[float, float, float, float]:
    """(x, y, z, w) of a 3×3 rotation matrix (Shepperd's method: stable for every rotation)."""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        return ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
    q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
    q[i], q[j], q[k] = 0.25 * s, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    return tuple(q)


class GroundProjector:
    """Pixels of one camera → ground points (optical frame), with a per-pixel table built on first use."""

    def __init__(self, intrinsics: CameraIntrinsics, pose: CameraPose, max_range_m: float = 50.0):
        if not max_range_m > 0:
            raise ValueError(f"max range must be > 0 m; got {max_range_m}")
        self.intrinsics, self.pose, self.max_range_m = intrinsics, pose, float(max_range_m)
        self._rotation = pose.level_from_camera()
        self._table: Optional[np.ndarray] = None

    def at_size(self, width: int, height: int) -> "GroundProjector":
        """The projector for a resized copy of the image (same camera, same pose)."""
        if (width, height) == (self.intrinsics.width, self.intrinsics.height):
            return self
        return GroundProjector(self.intrinsics.scaled(width, height), self.pose, self.max_range_m)

    def rays_to_ground(self, rays: np.ndarray) -> np.ndarray:
        """N×3 optical-frame rays → N×3 ground points in the optical frame; NaN rows where dropped."""
        level = rays @ self._rotation.T
        down = level[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(down > 1e-9, self.pose.height_m / down, np.nan)
        points = rays * t[:, None]
        ground_range = np.hypot(level[:, 0], level[:, 2]) * t
        points[~(ground_range <= self.max_range_m)] = np.nan  # NaN range (above the horizon) too
        return points

    def project(self, pixels: np.ndarray) -> np.ndarray:
        """N×2 pixel coordinates (x, y) → N×3 ground points in the optical frame (NaN: dropped)."""
        return self.rays_to_ground(self.intrinsics.normalised_rays(pixels))

    @property
    def table(self) -> np.ndarray:
        """H×W×3 float32 ground point of every pixel centre (NaN: above the horizon or out of range)."""
        if self._table is None:
            w, h = self.intrinsics.width, self.intrinsics.height
            xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
            self._table = self.project(np.column_stack([xs.ravel(), ys.ravel()])).reshape(h, w, 3).astype(np.float32)
        return self._table

    def at_pixels(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """N×3 ground points of integer pixel coordinates, from :attr:`table` (NaN rows: dropped)."""
        return self.table[ys, xs].astype(np.float64)

    def level(self, points: np.ndarray) -> np.ndarray:
        """N×3 optical-frame points → level frame (x right, y down, z forward; ground at y = height)."""
        return points @ self._rotation.T

    def ground_range(self, points: np.ndarray) -> np.ndarray:
        """Horizontal distance (m) from the point under the camera to each optical-frame point."""
        level = self.level(points)
        return np.hypot(level[:, 0], level[:, 2])

    def heights_above_ground(self, contacts: np.ndarray, top_pixels: np.ndarray) -> np.ndarray:
        """How high over each of ``contacts`` (N×3 ground points, optical frame) the ray of the matching
        ``top_pixels`` (N×2) passes where it crosses the vertical through the contact point: a standing
        object's height (NaN where the ray is vertical)."""
        rays = self.level(self.intrinsics.normalised_rays(np.asarray(top_pixels, np.float64).reshape(-1, 2)))
        contacts = self.level(np.asarray(contacts, np.float64).reshape(-1, 3))
        horizontal = np.hypot(rays[:, 0], rays[:, 2])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(horizontal > 0, np.hypot(contacts[:, 0], contacts[:, 2]) / horizontal, np.nan)
        return self.pose.height_m - t * rays[:, 1]
