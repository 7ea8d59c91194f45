"""Sub-commands of the ``rpl-perception`` CLI (see :mod:`rpl_perception.cli`)."""

from pathlib import Path

from ..checkpoint import DEFAULT_CHECKPOINT

#: frames shipped with the package: images/ (stills; labels/ for the RoadAnomaly ones), drive/ (a clip)
SAMPLES_ROOT = Path(__file__).resolve().parents[1] / "samples"


def add_model_arguments(parser) -> None:
    """The options every command that runs the model shares."""
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors or segmenter .pth), or 'default' for the embedded model")
    parser.add_argument("--score", default=None,
                        help="anomaly score: rpl_energy, energy, max_logit, max_softmax, entropy "
                             "(default: the model's own)")
    parser.add_argument("--size", default=None, metavar="WxH", type=parse_size,
                        help="network input size (default: the model's, 1024x512 for ESPNetv2)")
    parser.add_argument("--smoothing-sigma", type=float, default=None,
                        help="Gaussian smoothing of the score, 0 = off (default: the model's, 1.0)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")


def parse_size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 1024x512 (width x height), got {text!r}") from None
    return w, h


def model_path(name: str) -> Path:
    return DEFAULT_CHECKPOINT if name == "default" else Path(name)


def load_segmenter_from_args(args):
    from ..segmenter import AnomalySegmenter

    return AnomalySegmenter.from_checkpoint(model_path(args.model), score=args.score,
                                            smoothing_sigma=args.smoothing_sigma,
                                            network_size=args.size, device=args.device)
