"""ROS 2 edge of rpl_perception: the ``anomaly_node`` (:mod:`.node`) around the ROS-free core.

:mod:`.codec`, :mod:`.topics`, :mod:`.pipeline`, :mod:`.stats`, :mod:`.throttle` and :mod:`.dds` do not
import rclpy, so they work (and are tested) where no ROS 2 is installed; :mod:`.node`, :mod:`.camera`,
:mod:`.parameters`, :mod:`.outputs` and :mod:`.diagnostics` need rclpy and the messages.
"""
