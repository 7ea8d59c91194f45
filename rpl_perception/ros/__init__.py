"""ROS 2 edge of rpl_perception: the ``anomaly_node`` (:mod:`.node`) around the ROS-free core.

:mod:`.codec`, :mod:`.topics`, :mod:`.frame_buffer` and :mod:`.stats` do not import rclpy, so they
work (and are tested) where no ROS 2 is installed; only :mod:`.node` needs rclpy and the messages.
"""
