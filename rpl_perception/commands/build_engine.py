"""``rpl-perception build-engine``: build (or validate) the TensorRT engine the node will load.

The build-only mode for CI and vehicles. It takes the node's deployment settings (model, size,
score, precision, batch range, cache folder or engine file: the same
:class:`~rpl_perception.backends.DeploymentSpec`), exports the ONNX graph where the node looks
for it, builds the engine where the node looks for it, and exits; the node then starts without
building. An already exported ONNX file can be given instead of the model options.
"""

import sys
from pathlib import Path

from . import add_deployment_arguments, add_model_arguments, deployment_spec_from_args


def register(subparsers):
    p = subparsers.add_parser(
        "build-engine", help="build the TensorRT engine the node loads (same settings, same file)",
        description="Build the serialized TensorRT engine for the node's deployment settings, or "
                    "reuse the cached one when its key (ONNX sha256, TensorRT version, GPU and "
                    "compute capability, precision, input profile) matches and it loads. Give the "
                    "same --model/--size/--score/--precision/--max-batch/--cache-dir (or --engine) "
                    "as the node's parameters, and the node loads this engine without building. "
                    "Needs TensorRT and pycuda (or PyTorch with CUDA).")
    p.add_argument("onnx", type=Path, nargs="?", default=None,
                   help="an exported ONNX file (default: export the model as the node would)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="most frames per batch, i.e. the node's cameras (default 1; the node's "
                        "max_batch parameter, 0 there meaning one per camera)")
    p.add_argument("--batch", type=int, nargs=3, default=None, metavar=("MIN", "OPT", "MAX"),
                   help="an explicit batch profile instead of 1..--max-batch")
    p.add_argument("--workspace", type=float, default=None, metavar="GB",
                   help="builder workspace limit in GiB (default 2)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached engine is valid")
    p.add_argument("--check", action="store_true",
                   help="only report whether the cached engine is valid (exit 1 if it is not)")
    add_model_arguments(p)
    add_deployment_arguments(p, backend=False)
    p.set_defaults(func=run, device="cuda:0")


def run(args) -> int:
    from ..backends.common import BackendUnavailable
    from ..backends.engine_cache import EngineNotBuildable
    from ..backends.tensorrt_build import build_engine, engine_cache_for, import_tensorrt

    device = args.device if args.device.startswith("cuda") else "cuda:0"
    spec = deployment_spec_from_args(args, backend="tensorrt", device=device)
    if args.batch is not None:
        spec = spec.with_changes(batch=tuple(args.batch))
    try:
        import_tensorrt()  # before a slow export that would be of no use
        onnx = args.onnx
        if onnx is None:
            from ..segmenter import AnomalySegmenter

            segmenter = AnomalySegmenter.from_spec(spec)
            onnx = spec.onnx_file(segmenter.model, segmenter.network_size)
        engine = spec.engine_file(onnx)
        if args.check:
            cache = engine_cache_for(onnx, device, spec.precision, batch=spec.batch,
                                     calibration_dir=spec.calibration_dir, engine_path=engine)
            reason = cache.stale_reason()
            print(f"{cache.engine_path}: {'valid' if reason is None else f'needs a build ({reason})'}")
            return 0 if reason is None else 1
        built = build_engine(onnx, device, spec.precision, batch=spec.batch,
                             workspace_gb=args.workspace or spec.workspace_gb,
                             calibration_dir=spec.calibration_dir, engine_path=engine, force=args.force)
    except (BackendUnavailable, EngineNotBuildable) as exc:
        print(f"rpl-perception build-engine: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'built' if built.built else 'cached, valid'}: {built.cache.engine_path}")
    print(f"onnx: {onnx}")
    return 0
