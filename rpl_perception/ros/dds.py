"""The DDS set-up that lets camera frames and the node's outputs cross process boundaries (ROS-free).

Stock Fast DDS writes a sample for another process on this machine into the *publishing* process's
512 KiB shared-memory segment; a larger sample overflows it and, with best-effort QoS, is lost
without a trace. ``config/fastdds.xml`` gives the segment 64 MiB. ``anomaly_node`` applies it to its
own process (so its large outputs reach best-effort consumers) unless the user configured Fast DDS
already; camera drivers get it from the same file through the same environment variable.

The profile also makes the node's readers and writers allocate each sample's buffer when needed and
free it after (``DYNAMIC`` history memory), instead of rmw_fastrtps's default of buffers that grow to
the largest sample seen and stay: one 4096×4096 frame otherwise kept ~250 MB of the node's memory
(``scripts/bench_huge_frame_memory.py``). rmw_fastrtps reads that setting from the XML only where
``RMW_FASTRTPS_USE_QOS_FROM_XML=1``, which the node sets with the profile (the ROS QoS of each topic
still applies; rmw then takes the publication mode from the XML too, so the profile asks for
asynchronous publication, which suits large samples).
"""

import os
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

__all__ = ["PROFILE_NAME", "LARGE_FRAME_HINT", "FASTDDS_SETTINGS", "QOS_FROM_XML", "find_profile",
           "profile_variable", "profile_environment"]

PROFILE_NAME = "fastdds.xml"
#: environment variables through which a user configures Fast DDS; any of them set: leave it alone
FASTDDS_SETTINGS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                    "FASTDDS_BUILTIN_TRANSPORTS")
#: distributions whose Fast DDS (2.x) reads the profile from FASTRTPS_DEFAULT_PROFILES_FILE
FASTDDS_2_DISTROS = ("humble", "iron", "jazzy")
FASTDDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
#: rmw_fastrtps takes the history memory policy and publication mode from the XML where this is "1"
QOS_FROM_XML = "RMW_FASTRTPS_USE_QOS_FROM_XML"

LARGE_FRAME_HINT = ("best-effort frames larger than the publisher's Fast DDS shared-memory segment (512 KiB "
                    "by default) are dropped; start the camera driver with "
                    "FASTDDS_DEFAULT_PROFILES_FILE=<rpl_perception share>/config/fastdds.xml (Cyclone DDS: "
                    "a larger socket receive buffer; README: Camera frames from other processes)")


def find_profile() -> Optional[Path]:
    """The installed ``share/rpl_perception/config/fastdds.xml`` (ament index, this Python's prefix),
    else the checkout's ``config/fastdds.xml``; None if neither exists."""
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory("rpl_perception")) / "config" / PROFILE_NAME)
        except (PackageNotFoundError, OSError, ValueError):  # OSError: AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    candidates.append(Path(sys.prefix) / "share" / "rpl_perception" / "config" / PROFILE_NAME)
    candidates.append(Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME)
    return next((path for path in candidates if path.is_file()), None)


def profile_variable(environ: Mapping[str, str] = os.environ) -> str:
    """The environment variable through which this distribution's Fast DDS reads a profile file."""
    return ("FASTRTPS_DEFAULT_PROFILES_FILE" if environ.get("ROS_DISTRO") in FASTDDS_2_DISTROS
            else "FASTDDS_DEFAULT_PROFILES_FILE")


def profile_environment(environ: Mapping[str, str] = os.environ,
                        profile: Optional[Path] = None) -> Dict[str, str]:
    """The variables to add to ``environ`` so that Fast DDS loads the large-frame profile; {} where
    the user configured Fast DDS already, another RMW is selected, or no profile is installed."""
    if any(name in environ for name in FASTDDS_SETTINGS):
        return {}
    if environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in FASTDDS_RMWS:
        return {}
    profile = profile or find_profile()
    if profile is None:
        return {}
    name = profile_variable(environ)
    return {name: str(profile), **({} if QOS_FROM_XML in environ else {QOS_FROM_XML: "1"})}
