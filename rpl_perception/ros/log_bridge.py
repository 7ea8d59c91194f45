"""Forward the core's Python ``logging`` records (``rpl_perception.*``) to a ROS logger.

The core logs with the standard library (which backend ``auto`` chose and what it skipped, an
export, a TensorRT engine build that takes minutes); in a node nothing would show those at INFO.
"""

import logging

__all__ = ["forward_python_logging", "RosLogHandler"]


class RosLogHandler(logging.Handler):
    """A logging handler writing each record to an rclpy logger at the matching severity."""

    def __init__(self, ros_logger, level: int = logging.INFO):
        super().__init__(level)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"[{record.name}] {self.format(record)}"
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)

    def close(self) -> None:
        logging.getLogger("rpl_perception").removeHandler(self)
        super().close()


def forward_python_logging(ros_logger, level: int = logging.INFO) -> RosLogHandler:
    """Attach a :class:`RosLogHandler` to the ``rpl_perception`` logger; ``close()`` detaches it."""
    handler = RosLogHandler(ros_logger, level)
    root = logging.getLogger("rpl_perception")
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    root.addHandler(handler)
    return handler
