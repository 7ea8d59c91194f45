"""Where the camera is over the ground, for the ground projection: fixed parameters or TF.

With ``ground_frame`` set (a frame whose x-y plane is the ground and z points up, e.g.
``base_footprint``), each frame's camera height, pitch and roll come from the transform
``ground_frame`` ← the image's ``header.frame_id`` (its optical frame) at the image's stamp, looked
up with ``tf2_ros`` — the camera mount from the URDF's static transforms, and the body's pitch and
roll where odometry publishes them. ``tf2_ros`` comes with every ROS distribution; it is not on PyPI,
so it is imported only when ``ground_frame`` is set.
"""

import importlib
from typing import Optional, Tuple

from ..ground_projection import CameraPose, rotation_from_quaternion
from .parameters import ParameterError

__all__ = ["TfCameraPose", "import_tf2_ros", "LOOKUP_TIMEOUT_S"]

#: how long a frame waits for its transform (the worker thread; the executor receives TF meanwhile)
LOOKUP_TIMEOUT_S = 0.05


def import_tf2_ros(ground_frame: str):
    """tf2_ros, or a ParameterError that says what to install or set instead."""
    try:
        return importlib.import_module("tf2_ros")
    except ImportError:
        raise ParameterError(f"ground_frame {ground_frame!r} needs tf2_ros (ros-<distro>-tf2-ros from the ROS "
                             "distribution; not on PyPI), which is not installed: install it, or leave ground_frame "
                             "empty and give camera_height_m / camera_pitch_deg / camera_roll_deg") from None


class TfCameraPose:
    """One TF buffer and listener for the node; :meth:`pose` per frame."""

    def __init__(self, node, ground_frame: str, tf2_ros=None):
        self.ground_frame = ground_frame
        self._tf2 = tf2_ros or import_tf2_ros(ground_frame)
        self.buffer = self._tf2.Buffer(node=node)
        self.listener = self._tf2.TransformListener(self.buffer, node)

    def pose(self, header) -> Tuple[Optional[CameraPose], str]:
        """(pose, "") for the frame of ``header``, or (None, why not)."""
        from rclpy.duration import Duration
        from rclpy.time import Time

        if not header.frame_id:
            return None, "the image has no header.frame_id to look up in TF"
        try:
            stamped = self.buffer.lookup_transform(self.ground_frame, header.frame_id, Time.from_msg(header.stamp),
                                                   timeout=Duration(seconds=LOOKUP_TIMEOUT_S))
        except self._tf2.TransformException as exc:
            return None, f"no transform {self.ground_frame} <- {header.frame_id} at the image's stamp ({exc})"
        rotation, translation = stamped.transform.rotation, stamped.transform.translation
        try:
            return CameraPose.from_ground_transform(
                rotation_from_quaternion(rotation.x, rotation.y, rotation.z, rotation.w), translation.z), ""
        except ValueError as exc:  # under the ground, or looking straight down / up
            return None, f"TF pose of {header.frame_id} over {self.ground_frame} is unusable: {exc}"
