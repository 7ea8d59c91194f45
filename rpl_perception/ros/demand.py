"""No work nobody reads: a camera is served only while something subscribes to one of its outputs.

As Autoware's perception nodes do, a camera whose outputs have no subscriber is idle: its frames are
counted (input rate, DDS losses) but neither deserialised, decoded nor inferred, and its diagnostics
say ``idle`` (OK). Each output is computed and converted only for its own subscribers
(:mod:`.outputs`). rclpy's subscription counts are read from the graph cache: a C call, cheap enough
per frame, so a subscriber that appears is served from the next frame on.
"""

from typing import Mapping

__all__ = ["has_readers", "is_read"]


def is_read(publisher) -> bool:
    """Something subscribes to this publisher's topic (a matched subscription, any QoS)."""
    return publisher.get_subscription_count() > 0


def has_readers(publishers: Mapping[str, object]) -> bool:
    """Something subscribes to one of a camera's outputs."""
    return any(is_read(publisher) for publisher in publishers.values())
