"""How ``anomaly_node`` treats Ctrl-C and SIGTERM (the rest of the node never touches signals).

A terminal's Ctrl-C under ``ros2 launch`` reaches the node twice: from the terminal (the whole
process group) and again from launch, which forwards SIGINT to its children. A user also presses
Ctrl-C twice when a stop takes a moment. rclpy's handler (installed by ``rclpy.init``) shuts the
context down on the first; the next one must neither raise KeyboardInterrupt in the middle of the
shutdown nor kill the process: once ``rclpy.try_shutdown`` has uninstalled rclpy's handler and the
interpreter finalises, CPython puts SIGINT back to its default action (terminate), and a second
Ctrl-C then ended the node by signal 2 (``ros2 launch``: "exited with code -2") although it was
stopping cleanly. SIGINT is therefore ignored at the OS level for the rest of the process once the
node stops (CPython's finalisation leaves an ignored signal ignored). SIGTERM keeps its default
action: it stays the firm stop for a shutdown that hangs.
"""

import signal

from rclpy.executors import SingleThreadedExecutor

__all__ = ["ignore_interrupts_while_serving", "ignore_interrupts_from_now_on", "StoppableExecutor"]


def _ignore(*_) -> None:
    """rclpy's handler calls the handler that was there before it: this one, which does nothing."""


def ignore_interrupts_while_serving() -> None:
    """Before ``rclpy.init``: rclpy's own handler stops the node on Ctrl-C, and then calls this one
    instead of Python's default (which raises KeyboardInterrupt wherever the main thread is)."""
    signal.signal(signal.SIGINT, _ignore)


def ignore_interrupts_from_now_on() -> None:
    """Once the node stops: further Ctrl-C (a second press, launch's forwarded SIGINT) are ignored by
    the OS, through ROS's shutdown and the interpreter's teardown alike."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StoppableExecutor(SingleThreadedExecutor):
    """rclpy's single-threaded executor, safe to build while a Ctrl-C stops the node: its constructor
    then fails half-way (the context is already shut down) and rclpy's ``__del__`` reads an attribute
    the constructor never set, printing "Exception ignored ... '_sigint_gc'" and a traceback on the
    stopping node's stderr."""

    def __del__(self) -> None:
        if hasattr(self, "_sigint_gc"):
            super().__del__()
