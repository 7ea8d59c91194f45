"""``rpl-perception bench``: time each stage of the per-frame pipeline on one or more backends.

Stages, per batch (each timed with the device synchronised):

- ``preprocess``: host — validate the camera frames and resize them to the network size
  (``AnomalySegmenter.preprocess``);
- ``upload``: host → device copy of the uint8 batch (nothing on the CPU);
- ``network``: the backend's graph — normalisation → network → argmax, score, smoothing;
- ``in-graph pre/post``: the share of ``network`` spent on normalisation, argmax, score and
  smoothing, measured by running the same backend on the same graph with the network replaced
  by a channel gather (an upper bound: that one full-resolution copy, which stands for the
  network's final resize, is counted too);
- ``download``: device → host copy of the label and score maps;
- ``postprocess``: host — resize the maps back to the camera size (``AnomalySegmenter.postprocess``).

"inference" below is ``network`` minus its in-graph pre/post; the pre+post share is
(preprocess + in-graph pre/post + postprocess) / inference.
"""

import json
import time
from pathlib import Path

from ..resources import SAMPLE_IMAGES
from . import (
    add_deployment_arguments,
    add_model_arguments,
    anomaly_segmenter_from_args,
    deployment_spec_from_args,
    parse_size,
)

STAGES = ("preprocess", "upload", "network", "in_graph_prepost", "download", "postprocess")
STAGE_LABELS = {
    "preprocess": "preprocess (host resize)",
    "upload": "upload (host → device)",
    "network": "network (whole graph)",
    "in_graph_prepost": "  of which in-graph pre/post",
    "download": "download (device → host)",
    "postprocess": "postprocess (host resize)",
    "total": "total",
}
DEFAULT_IMAGE = SAMPLE_IMAGES / "animals03_Zebras_in_the_road.jpg"


def register(subparsers):
    p = subparsers.add_parser(
        "bench", help="time pipeline stages per backend",
        description="Time each pipeline stage (median and p95 ms), frames per second and peak "
                    "memory for one or more backends, side by side. See the module docstring of "
                    "rpl_perception.commands.bench for what each stage covers.")
    p.add_argument("--backend", nargs="+", default=["torch", "onnxruntime"], metavar="SPEC",
                   help="backends to compare: NAME[@DEVICE][/PRECISION], NAME one of torch, "
                        "onnxruntime, tensorrt, auto; DEVICE defaults to --device, PRECISION to "
                        "--precision; e.g. "
                        "torch@cuda/fp16 onnxruntime@cuda tensorrt@cuda/int8 "
                        "(default: torch onnxruntime)")
    p.add_argument("--batch", type=int, default=1, help="frames per batch (default 1)")
    p.add_argument("--frames", type=int, default=20, help="timed batches per backend (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="split the timed batches into this many rounds that alternate between "
                        "backends, so that a changing machine load hits all alike (default 1)")
    p.add_argument("--camera-size", type=parse_size, default=None, metavar="WxH",
                   help="camera frame size the host resizes from/to (default: the image's own)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE,
                   help="frame to use (default: a bundled sample)")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime CPU threads (default: one per available CPU)")
    p.add_argument("--no-split", action="store_true",
                   help="skip measuring the in-graph pre/post share (saves a second export/engine)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    add_model_arguments(p)
    add_deployment_arguments(p, backend=False)
    p.set_defaults(func=run)


def parse_spec(spec: str, default_device: str = "cpu", default_precision: str = "fp32"):
    """``NAME[@DEVICE][/PRECISION]`` → (name, device, precision)."""
    from ..backends import BACKENDS, PRECISIONS

    rest, _, precision = spec.partition("/")
    name, _, device = rest.partition("@")
    precision = precision or default_precision
    device = device or ("cuda" if name == "tensorrt" else default_device)
    if name not in BACKENDS:
        raise ValueError(f"backend spec {spec!r}: unknown backend {name!r} ({', '.join(BACKENDS)})")
    if precision not in PRECISIONS:
        raise ValueError(f"backend spec {spec!r}: unknown precision {precision!r} "
                         f"({', '.join(PRECISIONS)})")
    return name, device, precision


def percentile_ms(samples, q: float) -> float:
    """The q-th percentile (linear interpolation, numpy's default) of seconds, in ms."""
    import numpy as np

    return float(np.percentile(np.asarray(samples, dtype=np.float64) * 1000.0, q))


def summarize(samples):
    return {"median_ms": percentile_ms(samples, 50), "p95_ms": percentile_ms(samples, 95)}


# --- memory -----------------------------------------------------------------------------------


def _status_kb(field: str):
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """Peak resident memory since the last reset (Linux VmHWM), else the process's lifetime peak."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def reset_peak_gpu():
    """Restart PyTorch's CUDA peak-memory count (the torch backend's figure; TensorRT reports what
    its engine holds, ONNX Runtime nothing)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def current_rss_mb():
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


# --- measuring --------------------------------------------------------------------------------


def _network_stub(segmenter):
    """The segmenter's AnomalyModel with the network replaced by a channel gather.

    The stand-in logits repeat the normalised image's channels: one copy at full resolution,
    about what the real network's final resize writes anyway.
    """
    import torch
    from torch import nn

    from ..models import AnomalyModel, RPLOutput

    class NetworkStub(nn.Module):
        def __init__(self, num_classes: int, has_branch: bool):
            super().__init__()
            self.has_branch = has_branch
            self.register_buffer("channels", torch.arange(num_classes) % 3, persistent=False)

        def forward(self, x):
            logits = x.index_select(1, self.channels)
            return RPLOutput(logits, logits if self.has_branch else None, None)

    model = segmenter.model
    meta = segmenter.meta
    # Only the inlier channels: the model's slice of them is then a no-op, as it is in the real
    # graph, where the export takes it before the final resize.
    return AnomalyModel(NetworkStub(model.num_inlier, segmenter.network.has_branch),
                        num_inlier=model.num_inlier, mean=meta.mean, std=meta.std,
                        score=model.score, smoothing_sigma=model.smoothing_sigma).eval()


#: idle time before each timed block: the thread pools of whatever ran last (ONNX Runtime's,
#: OpenMP's) keep spinning for a while after their last op and would slow the next block down
SETTLE_SECONDS = 0.3


class Measurement:
    """Samples of one backend, accumulated over rounds."""

    def __init__(self, spec, backend, stub):
        self.spec, self.backend, self.stub = spec, backend, stub
        self.samples = {stage: [] for stage in STAGES}
        self.totals = []
        self.peak_rss = 0.0
        self.rss_delta = 0.0

    @staticmethod
    def _timed(backend, fn, *args):
        started = time.perf_counter()
        out = fn(*args)
        backend.synchronize()
        return out, time.perf_counter() - started

    def _pipeline(self, segmenter, frames):
        """One batch through every stage → {stage: seconds}."""
        b, times = self.backend, {}
        (batch, sizes), times["preprocess"] = self._timed(b, segmenter.preprocess, frames)
        inputs, times["upload"] = self._timed(b, b.upload, batch)
        outputs, times["network"] = self._timed(b, b.run, inputs)
        (labels, anomaly), times["download"] = self._timed(b, b.download, outputs)
        _, times["postprocess"] = self._timed(b, segmenter.postprocess, labels, anomaly, sizes)
        return times

    def run_block(self, segmenter, frames, warmup: int, count: int, progress):
        """``warmup`` untimed then ``count`` timed batches; then the same count of the stub graph."""
        time.sleep(SETTLE_SECONDS)
        for _ in range(warmup):
            self._pipeline(segmenter, frames)
            progress.update(1)
        baseline = current_rss_mb()
        reset_peak_rss()
        reset_peak_gpu()
        for _ in range(count):
            times = self._pipeline(segmenter, frames)
            for stage, seconds in times.items():
                self.samples[stage].append(seconds)
            self.totals.append(sum(times.values()))
            progress.update(1)
        self.peak_rss = max(self.peak_rss, peak_rss_mb())
        if baseline is not None:
            self.rss_delta = max(self.rss_delta, self.peak_rss - baseline)
        if self.stub is not None:  # its own block: interleaved, the two thread pools' spinning
            # would slow each other down
            time.sleep(SETTLE_SECONDS)
            stub_inputs = self.stub.upload(segmenter.preprocess(frames)[0])
            for i in range(count + 1):  # the first one warms up
                _, seconds = self._timed(self.stub, self.stub.run, stub_inputs)
                if i:
                    self.samples["in_graph_prepost"].append(seconds)

    def result(self, batch: int):
        stages = {stage: summarize(values) for stage, values in self.samples.items()
                  if values and (stage != "in_graph_prepost" or self.stub is not None)}
        stages["total"] = summarize(self.totals)
        med = {stage: value["median_ms"] for stage, value in stages.items()}
        inference = med["network"] - med.get("in_graph_prepost", 0.0)
        prepost = med["preprocess"] + med.get("in_graph_prepost", 0.0) + med["postprocess"]
        peak_gpu = self.backend.peak_device_memory()
        return {
            "backend": self.spec, "description": self.backend.describe(), "stages": stages,
            "inference_ms": inference, "prepost_ms": prepost,
            "prepost_share": prepost / inference if inference > 0 else None,
            "fps": 1000.0 * batch / med["total"],
            "peak_rss_mb": self.peak_rss, "rss_growth_mb": self.rss_delta,
            "peak_gpu_mb": None if peak_gpu is None else peak_gpu / 2 ** 20,
        }


def _make_backend(spec, segmenter, args, model=None, **overrides):
    """The backend of one ``--backend`` entry, through the same deployment spec as the node."""
    name, device, precision = spec
    deployment = deployment_spec_from_args(args, backend=name, device=device, precision=precision,
                                           max_batch=args.batch, **overrides)
    return deployment.create_backend(segmenter.model if model is None else model,
                                     size=segmenter.network_size)


def run(args) -> int:
    import sys
    import tempfile

    from tqdm import tqdm

    from ..backends import BackendUnavailable
    from ..image import read_rgb, resize_rgb

    if args.batch < 1 or args.frames < 1 or args.warmup < 0 or args.rounds < 1:
        raise ValueError("--batch, --frames and --rounds must be >= 1, --warmup >= 0")
    if args.rounds > args.frames:
        raise ValueError(f"--rounds {args.rounds} exceeds --frames {args.frames}")
    specs = [parse_spec(s, args.device, args.precision) for s in args.backend]
    rgb = read_rgb(args.image)
    if args.camera_size is not None:
        rgb = resize_rgb(rgb, args.camera_size)
    frames = [rgb.copy() for _ in range(args.batch)]
    segmenter = anomaly_segmenter_from_args(args)

    measurements = []
    with tempfile.TemporaryDirectory(prefix="rpl-bench-") as stub_dir:
        try:
            for spec, text in zip(specs, args.backend):
                backend = _make_backend(spec, segmenter, args)
                stub = None
                if not args.no_split:
                    # the backend actually chosen ('auto' resolved), on a throw-away cache folder
                    stub = _make_backend((backend.name, str(backend.device), spec[2]), segmenter,
                                         args, model=_network_stub(segmenter),
                                         cache_dir=Path(stub_dir), engine=None, onnx_path=None)
                measurements.append(Measurement(text, backend, stub))
        except BackendUnavailable as exc:
            print(f"rpl-perception bench: error: {text}: {exc}", file=sys.stderr)
            return 2

        per_round = [args.frames // args.rounds + (r < args.frames % args.rounds)
                     for r in range(args.rounds)]
        warmups = [args.warmup] + [1] * (args.rounds - 1)
        progress = tqdm(total=len(measurements) * (args.frames + sum(warmups)), desc="bench",
                        unit="batch", disable=None)
        for count, warmup in zip(per_round, warmups):
            for m in measurements:
                m.run_block(segmenter, frames, warmup, count, progress)
        progress.close()

    w, h = segmenter.network_size
    report = {
        "network_size": [w, h], "camera_size": [rgb.shape[1], rgb.shape[0]], "batch": args.batch,
        "frames": args.frames, "warmup": args.warmup, "rounds": args.rounds,
        "score": segmenter.score, "model": args.model,
        "results": [m.result(args.batch) for m in measurements],
    }
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def _cell(value, fmt="{:.1f}"):
    return "n/a" if value is None else fmt.format(value)


def format_table(report) -> str:
    """The human-readable side-by-side table of a bench report."""
    results = report["results"]
    w, h = report["network_size"]
    cw, ch = report["camera_size"]
    lines = [f"network {w}x{h}, batch {report['batch']}, camera frames {cw}x{ch}, "
             f"{report['frames']} timed batches (+{report['warmup']} warm-up), score {report['score']}"]
    rows = [("ms: median / p95", [r["backend"] for r in results])]
    for stage in STAGES + ("total",):
        cells = []
        for r in results:
            s = r["stages"].get(stage)
            cells.append("n/a" if s is None else f"{s['median_ms']:.1f} / {s['p95_ms']:.1f}")
        rows.append((STAGE_LABELS[stage], cells))
    rows.append(("inference (network − in-graph pre/post)",
                 [_cell(r["inference_ms"]) for r in results]))
    rows.append(("pre+post (host + in-graph)", [_cell(r["prepost_ms"]) for r in results]))
    shares = [None if r["prepost_share"] is None else 100 * r["prepost_share"] for r in results]
    rows.append(("pre+post / inference", [_cell(share, "{:.1f} %") for share in shares]))
    rows.append(("frames per second", [f"{r['fps']:.2f}" for r in results]))
    first = results[0]["stages"]["total"]["median_ms"]
    rows.append((f"speed-up vs {results[0]['backend']} (total)",
                 [f"{first / r['stages']['total']['median_ms']:.2f}x" for r in results]))
    rows.append(("peak RSS MB (growth during run)",
                 [f"{r['peak_rss_mb']:.0f} (+{r['rss_growth_mb']:.0f})" for r in results]))
    rows.append(("peak GPU MB", [_cell(r["peak_gpu_mb"], "{:.0f}") for r in results]))
    label_width = max(len(label) for label, _ in rows)
    col_width = max(14, *(len(c) for _, cells in rows for c in cells))
    for label, cells in rows:
        lines.append(label.ljust(label_width) + "  " + "  ".join(c.rjust(col_width) for c in cells))
    lines.append("")
    lines.extend(f"{r['backend']}: {r['description']}" for r in results)
    return "\n".join(lines)
