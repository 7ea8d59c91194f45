"""Shared fixtures. ``../shared`` (next to the repository) holds third-party weights and small real
datasets; tests that need it skip with a reason where it is absent. Override with RPL_SHARED_DIR."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("RPL_SHARED_DIR", REPO_ROOT.parent / "shared"))


def _shared_path(*parts):
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared/ folder next to the repository; set RPL_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_dir():
    return _shared_path()


@pytest.fixture(scope="session")
def roadanomaly_dev():
    """15 labelled RoadAnomaly scenes: images/NAME.jpg, labels/NAME.png (0 normal, 2 anomaly)."""
    return _shared_path("data", "roadanomaly_dev")


@pytest.fixture(scope="session")
def espnetv2_pth():
    return _shared_path("models", "espnetv2", "espnetv2_s_2.0_city_1024x512.pth")


@pytest.fixture(scope="session")
def ros_env():
    """A private DDS domain on localhost for this test session (set before any rclpy.init), stock Fast DDS
    in this process (the tests choose where the large-frame profile applies), and this environment's
    prefix on AMENT_PREFIX_PATH / PATH so that ``ros2 launch`` and ``ros2 run`` find what pip installed."""
    pytest.importorskip("rclpy", reason="needs rclpy and the message packages (pip install .[ros])")
    import random
    import sys

    patch = pytest.MonkeyPatch()
    patch.setenv("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    patch.setenv("ROS_LOCALHOST_ONLY", "1")
    patch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS",
                 "RMW_IMPLEMENTATION"):
        patch.delenv(name, raising=False)
    prefix = sys.prefix
    patch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(p for p in (prefix, os.environ.get("AMENT_PREFIX_PATH"))
                                                       if p))
    patch.setenv("PATH", os.pathsep.join((str(Path(sys.executable).parent), os.environ["PATH"])))
    yield dict(os.environ)
    patch.undo()
