"""Sub-commands of the ``rpl-perception`` CLI (see :mod:`rpl_perception.cli`)."""

from pathlib import Path

from ..resources import SAMPLES_ROOT, model_path  # noqa: F401 - where commands take them from


def add_model_arguments(parser, deployment: bool = False) -> None:
    """The options every command that runs the model shares; with ``deployment`` also how it is
    deployed (backend, precision, cache), the options of the node's deployment parameters."""
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors or closed-set .pth), or 'default' for the embedded model")
    parser.add_argument("--score", default=None,
                        help="anomaly score: rpl_energy, energy, max_logit, max_softmax, entropy "
                             "(default: the model's own)")
    parser.add_argument("--size", default=None, metavar="WxH", type=parse_size,
                        help="network input size (default: the model's, 1024x512 for ESPNetv2)")
    parser.add_argument("--smoothing-sigma", type=float, default=None,
                        help="Gaussian smoothing of the score, 0 = off (default: the model's, 1.0)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    if deployment:
        add_deployment_arguments(parser)


def add_deployment_arguments(parser, backend: bool = True) -> None:
    """Backend, precision and file options, named as the node's parameters."""
    from ..backends import BACKENDS, PRECISIONS

    if backend:
        parser.add_argument("--backend", choices=BACKENDS, default="auto",
                            help="inference backend (default auto: TensorRT, ONNX Runtime, PyTorch, "
                                 "the first that works on --device)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="network precision (scores are float32 in every case; fp16: TensorRT "
                             "and PyTorch on CUDA; int8: TensorRT)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where exported ONNX files and TensorRT engines go "
                             "(default ~/.cache/rpl_perception)")
    parser.add_argument("--engine", type=Path, default=None, metavar="FILE",
                        help="TensorRT engine file to load or build (default: in the cache folder)")
    parser.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                        help="folder of images for an int8 TensorRT build")


def parse_size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 1024x512 (width x height), got {text!r}") from None
    return w, h


def deployment_spec_from_args(args, **overrides):
    """The :class:`~rpl_perception.backends.DeploymentSpec` of a command's options."""
    from ..backends import DeploymentSpec

    settings = dict(vars(args))
    settings.setdefault("max_batch", getattr(args, "batch_size", None))
    settings.update(overrides)
    return DeploymentSpec.from_settings(settings)


def anomaly_segmenter_from_args(args):
    """The AnomalySegmenter of the model options; with deployment options (``--backend``), its backend
    is the one they name (created on first use), else PyTorch on ``--device``."""
    from ..segmenter import AnomalySegmenter

    if isinstance(getattr(args, "backend", None), str):  # (bench's --backend is a list of its own)
        return AnomalySegmenter.from_spec(deployment_spec_from_args(args))
    return AnomalySegmenter.from_checkpoint(model_path(args.model), score=args.score,
                                            smoothing_sigma=args.smoothing_sigma,
                                            network_size=args.size, device=args.device)
