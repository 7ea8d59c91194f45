"""``rpl-perception build-engine``: build (or validate) the cached TensorRT engine of an ONNX file.

This is the build-only mode for CI and vehicles: it leaves the engine in the cache beside the
ONNX file (or in --cache-dir) and exits, so that the node starts without building.
"""

import sys
from pathlib import Path


def register(subparsers):
    p = subparsers.add_parser(
        "build-engine", help="build the TensorRT engine of an exported ONNX file",
        description="Build a serialized TensorRT engine from an ONNX file written by "
                    "'rpl-perception export', or reuse the cached one when its key (ONNX sha256, "
                    "TensorRT version, GPU and compute capability, precision, input profile) "
                    "matches and it loads. Needs TensorRT and pycuda (or PyTorch with CUDA).")
    p.add_argument("onnx", type=Path, help="the exported ONNX file")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    p.add_argument("--workspace", type=float, default=None, metavar="GB",
                   help="builder workspace limit in GiB (default 2)")
    p.add_argument("--batch", type=int, nargs=3, default=None, metavar=("MIN", "OPT", "MAX"),
                   help="batch profile of a --dynamic-batch export (default 1 1 1)")
    p.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                   help="folder of images for int8 entropy calibration")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the engine and caches go (default: beside the ONNX file)")
    p.add_argument("--device", default="cuda:0", help="GPU to build for (default cuda:0)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached engine is valid")
    p.add_argument("--check", action="store_true",
                   help="only report whether the cached engine is valid (exit 1 if it is not)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backends.common import BackendUnavailable
    from ..backends.tensorrt_backend import DEFAULT_WORKSPACE_GB, build_engine, engine_cache_for

    try:
        if args.check:
            cache = engine_cache_for(args.onnx, args.device, args.precision, batch=args.batch,
                                     calibration_dir=args.calibration_images, cache_dir=args.cache_dir)
            reason = cache.stale_reason()
            state = "valid" if reason is None else f"needs a build ({reason})"
            print(f"{cache.engine_path}: {state}")
            return 0 if reason is None else 1
        built = build_engine(args.onnx, args.device, args.precision, batch=args.batch,
                             workspace_gb=args.workspace or DEFAULT_WORKSPACE_GB,
                             calibration_dir=args.calibration_images, cache_dir=args.cache_dir,
                             force=args.force)
    except BackendUnavailable as exc:
        print(f"rpl-perception build-engine: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'built' if built.built else 'cached, valid'}: {built.cache.engine_path}")
    return 0
