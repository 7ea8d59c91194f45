"""``anomaly_node --help``: how to start the node and its parameters, printed without starting it
(ROS-free: the text comes from the node's parameter table)."""

import math
import textwrap
from typing import List, Optional, Sequence

from .parameters import PARAMETERS

__all__ = ["HELP_FLAGS", "wants_help", "usage"]

HELP_FLAGS = ("-h", "--help")


def wants_help(argv: Sequence[str]) -> bool:
    """``-h`` / ``--help`` among the node's own arguments (those before ``--ros-args``)."""
    own = list(argv)
    if "--ros-args" in own:
        own = own[:own.index("--ros-args")]
    return any(arg in HELP_FLAGS for arg in own)


def _default(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def usage(program: str = "anomaly_node", parameters: Optional[Sequence] = None) -> str:
    lines: List[str] = [
        f"usage: {program} [-h] [--ros-args -p NAME:=VALUE ... --params-file FILE -r FROM:=TO ...]",
        "",
        "The ROS 2 node rpl_anomaly: for each input image topic <prefix>/<name> it publishes",
        "<prefix>/semantic, /anomaly, /anomaly_mask, /semantic_color and /overlay (each while subscribed),",
        "and per-camera diagnostics on /diagnostics. Stops on Ctrl-C or SIGTERM (exit code 0); exit code 2",
        "on parameters it cannot start with. All parameters: config/anomaly.yaml of the package.",
        "",
        "parameters (name = default: description; * may be set while running):",
    ]
    for spec in parameters or PARAMETERS:
        text = f"{spec.name} = {_default(spec.default)}{' *' if spec.dynamic else ''}: {spec.description}"
        lines += textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="      ")
    lines += ["", "example:", f"  {program} --ros-args -p image_topics:='[/cam/image_raw]' -p backend:=onnxruntime"]
    return "\n".join(lines)
