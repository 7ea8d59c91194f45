"""Files shipped inside the package: the embedded default model and the sample frames.

Nothing here needs the ``../shared`` folder or a download: a plain ``pip install`` has them.
"""

from pathlib import Path
from typing import List

__all__ = ["PACKAGE_ROOT", "DEFAULT_CHECKPOINT", "DEFAULT_MODEL_NAME", "SAMPLES_ROOT", "SAMPLE_IMAGES",
           "model_path", "sample_images"]

PACKAGE_ROOT = Path(__file__).resolve().parent

#: the embedded default model (ESPNetv2 Cityscapes with its RPL branch)
DEFAULT_CHECKPOINT = PACKAGE_ROOT / "weights" / "espnetv2_cityscapes.safetensors"
#: the name that stands for :data:`DEFAULT_CHECKPOINT` in options and parameters
DEFAULT_MODEL_NAME = "default"

#: frames shipped with the package: images/ (stills; labels/ for the RoadAnomaly ones), drive/ (a clip)
SAMPLES_ROOT = PACKAGE_ROOT / "samples"
SAMPLE_IMAGES = SAMPLES_ROOT / "images"


def model_path(name) -> Path:
    """A model option or parameter → its file: ``"default"`` is the embedded model, anything else a
    path (``~`` expanded)."""
    return DEFAULT_CHECKPOINT if str(name) == DEFAULT_MODEL_NAME else Path(name).expanduser()


def sample_images() -> List[Path]:
    """The bundled still images (JPEG), sorted by name."""
    return sorted(SAMPLE_IMAGES.glob("*.jpg"))
