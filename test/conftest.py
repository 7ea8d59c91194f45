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
