"""The node's ``/diagnostics``: one status per camera and one for the model, named after the node's
fully qualified name so that several instances (namespaces) never share a status name."""

from typing import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .stats import StatusReport

__all__ = ["diagnostics_message"]


def status_message(name: str, hardware_id: str, report: StatusReport) -> DiagnosticStatus:
    return DiagnosticStatus(level=bytes([report.level]), name=name, message=report.message,
                            hardware_id=hardware_id, values=[KeyValue(key=k, value=v) for k, v in report.values])


def diagnostics_message(node_name: str, stamp, cameras: Sequence, model: StatusReport,
                        now: float) -> DiagnosticArray:
    """``cameras``: :class:`.camera.Camera`; ``now``: the monotonic time of their counts."""
    array = DiagnosticArray()
    array.header.stamp = stamp
    for camera in cameras:
        report = camera.stats.report(now, camera.problems(now), idle=not camera.is_read())
        report.values.append(("input reliability", camera.reliability))
        with camera.lock:
            frame_id = camera.frame_id
        array.status.append(status_message(f"{node_name}: {camera.topic}", frame_id, report))
    array.status.append(status_message(f"{node_name}: model", "", model))
    return array
