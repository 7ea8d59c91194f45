"""Fixtures of the training tests; the repository's shared ones (``shared_dir`` …) come from
``test/conftest.py``, the data builders from :mod:`rpl_training_testdata`."""

import importlib.util
from pathlib import Path

import pytest

from rpl_training_testdata import make_anomaly_set, make_cityscapes, make_frames, make_small_coco

_REPO_CONFTEST = Path(__file__).resolve().parents[2] / "test" / "conftest.py"
_spec = importlib.util.spec_from_file_location("rpl_repo_conftest", _REPO_CONFTEST)
_repo_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_repo_conftest)
shared_dir = _repo_conftest.shared_dir
roadanomaly_dev = _repo_conftest.roadanomaly_dev


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Paths of a tiny Cityscapes, COCO, frames folder and anomaly validation set."""
    base = tmp_path_factory.mktemp("rpl_training_data")
    return {"cityscapes": make_cityscapes(base / "cityscapes"), "coco": make_small_coco(base / "coco"),
            "frames": make_frames(base / "frames"), "anomaly": make_anomaly_set(base / "anomaly")}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tiny networks here run fastest on one thread (the cores are shared with other jobs); set
    before any module-scoped training run so that every run uses the same float arithmetic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
