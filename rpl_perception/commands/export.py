"""``rpl-perception export``: write the whole per-frame computation as one ONNX graph."""

import sys
from pathlib import Path

from . import add_model_arguments, load_segmenter_from_args


def register(subparsers):
    p = subparsers.add_parser(
        "export", help="export the model (network + scoring) to ONNX",
        description="Export normalisation, segmenter, RPL branch, argmax, anomaly score and its "
                    "smoothing as one ONNX graph: input 'images' (B,H,W,3) uint8 RGB at the network "
                    "size; outputs 'labels' (B,H,W) uint8, 'anomaly' (B,H,W) float32 and, with "
                    "--logits, 'logits' (B,C,H,W). Shapes are static unless --dynamic-batch; the "
                    "image size is always static for ESPNetv2 (its pyramid pooling is a different "
                    "operator per size: export one file per --size). After writing, the graph is "
                    "checked against PyTorch on a real image with ONNX Runtime.")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--dynamic-size", action="store_true",
                   help="make the image size dynamic (refused for ESPNetv2, see above)")
    p.add_argument("--logits", action="store_true", help="also output the closed-set logits")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check with PyTorch")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backends import OnnxRuntimeBackend
    from ..export import DEFAULT_OPSET, check_parity, export_onnx, sample_batch

    if args.device != "cpu":
        raise ValueError("export traces on the CPU; drop --device")
    segmenter = load_segmenter_from_args(args)
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
