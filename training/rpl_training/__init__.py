"""rpl_training: fit the RPL branch (and the CoroCL projector) of an rpl_perception model.

* :mod:`rpl_training.losses` — the RPL losses and CoroCL, as the paper and the official code;
* :mod:`rpl_training.datasets` — Cityscapes / driving frames (inliers), COCO / cut-outs (outliers);
* :mod:`rpl_training.transforms` — outlier exposure (paste objects, context images);
* :mod:`rpl_training.data` — the deterministic, resumable sample stream;
* :mod:`rpl_training.train` — the loop (one CPU, one GPU, or DDP under torchrun) and ``rpl-train``.
"""

__version__ = "0.1.0"

from .losses import corocl_loss, rpl_losses  # noqa: E402

__all__ = ["rpl_losses", "corocl_loss", "__version__"]
