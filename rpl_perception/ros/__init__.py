"""ROS 2 edge of rpl_perception: the ``anomaly_node`` (:mod:`.node`) around the ROS-free core.

The image codec and the topic names are ROS-free and live in the core
(:mod:`rpl_perception.image_codec`, :mod:`rpl_perception.topics`; :mod:`.codec` and :mod:`.topics`
re-export them). :mod:`.parameters` (the node's parameter table), :mod:`.pipeline`, :mod:`.stats`,
:mod:`.throttle` and :mod:`.dds` do not import rclpy, so they work (and are tested) where no ROS 2 is
installed; :mod:`.node`, :mod:`.camera`, :mod:`.outputs` and :mod:`.diagnostics` need rclpy and the
messages.
"""
