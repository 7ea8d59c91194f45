"""``rpl-perception export``: write the whole per-frame computation as one ONNX graph."""

import sys
from pathlib import Path

from . import add_model_arguments, anomaly_segmenter_from_args, deployment_spec_from_args


def register(subparsers):
    p = subparsers.add_parser(
        "export", help="export the model (network + scoring) to ONNX",
        description="Export normalisation, segmenter, RPL branch, argmax, anomaly score and its "
                    "smoothing as one ONNX graph: input 'images' (B,H,W,3) uint8 RGB at the network "
                    "size; outputs 'labels' (B,H,W) uint8, 'anomaly' (B,H,W) float32 and, with "
                    "--logits, 'logits' (B,C,H,W). Shapes are static unless --dynamic-batch; the "
                    "image size is always static for ESPNetv2 (its pyramid pooling is a different "
                    "operator per size: export one file per --size). Without --out the file goes "
                    "where the node, bench, eval and build-engine look for it with the same "
                    "settings (--cache-dir, --max-batch). After writing, the graph is checked "
                    "against PyTorch on a real image with ONNX Runtime.")
    p.add_argument("--out", type=Path, default=None,
                   help="ONNX file to write (default: the deployment cache's file, as the node uses it)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="without --out: most frames per batch (the node's cameras); > 1 exports a "
                        "dynamic batch")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--dynamic-size", action="store_true",
                   help="make the image size dynamic (refused for ESPNetv2, see above)")
    p.add_argument("--logits", action="store_true", help="also output the closed-set logits")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check with PyTorch")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="without --out: the deployment cache folder (default ~/.cache/rpl_perception)")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backends import OnnxRuntimeBackend
    from ..export import DEFAULT_OPSET, export_onnx
    from ..parity import check_parity, sample_batch

    if args.device != "cpu":
        raise ValueError("export traces on the CPU; drop --device")
    segmenter = anomaly_segmenter_from_args(args)
    if args.out is None:  # the file the deployment spec resolves, exactly as the node would export it
        spec = deployment_spec_from_args(args)
        path = spec.onnx_file(segmenter.model, segmenter.network_size)
        print(f"deployment graph: {path} (batch {'1..' + str(spec.batch[2]) if spec.dynamic_batch else 1})")
        args.dynamic_batch, args.batch = spec.dynamic_batch, 1
    else:
        path = export_onnx(segmenter.model, args.out, segmenter.network_size, batch=args.batch,
                           dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size,
                           return_logits=args.logits, opset=args.opset or DEFAULT_OPSET,
                           metadata={"architecture": segmenter.meta.architecture,
                                     "class_names": segmenter.class_names,
                                     "display_range": list(segmenter.display_range),
                                     "anomaly_threshold": segmenter.anomaly_threshold})
    w, h = segmenter.network_size
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {w}x{h}, batch "
          f"{'dynamic' if args.dynamic_batch else args.batch}, score {segmenter.score}")
    if args.no_verify:
        return 0
    report = check_parity(segmenter.model, OnnxRuntimeBackend(path),
                          sample_batch(segmenter.network_size, 2 if args.dynamic_batch else args.batch))
    ok = report.passes()
    print(f"parity with PyTorch (ONNX Runtime CPU, fp32): {report} -> {'OK' if ok else 'FAILED'} "
          "(needs <= 1e-4 and >= 99.99 %)")
    if not ok:
        print("rpl-perception export: error: the exported graph does not match PyTorch", file=sys.stderr)
    return 0 if ok else 1
