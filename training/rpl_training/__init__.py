"""rpl_training: fit the RPL branch (and the CoroCL projector) of an rpl_perception model.

* :mod:`rpl_training.losses` — the RPL losses and CoroCL, as the paper and the official code;
* :mod:`rpl_training.datasets` — Cityscapes / driving frames (inliers), COCO / cut-outs (outliers);
* :mod:`rpl_training.transforms` — outlier exposure (paste objects, context images);
* :mod:`rpl_training.sample_stream` — the deterministic, resumable sample stream (several weighted sources);
* :mod:`rpl_training.model` — the branch on the frozen closed-set network, its optimiser and one step's losses;
* :mod:`rpl_training.validation` — validation on one labelled set or a suite of them;
* :mod:`rpl_training.run_state` — a run's state and its set-up (new or resumed);
* :mod:`rpl_training.train` — the loop (one CPU, one GPU, or DDP under torchrun) and ``rpl-train``;
* :mod:`rpl_training.config`, :mod:`rpl_training.utils` — the config file, the metrics log, Ctrl-C.
"""

__version__ = "0.1.0"

from .losses import corocl_loss, rpl_losses  # noqa: E402

__all__ = ["rpl_losses", "corocl_loss", "__version__"]
