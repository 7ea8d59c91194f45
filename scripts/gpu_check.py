"""GPU check: fp32 vs fp16 parity and speed of every backend on this machine's GPU, and one
training step, in one command; writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``.

    python scripts/gpu_check.py --out gpu_check            # a GPU machine: about 5-8 min
    python scripts/gpu_check.py --device cpu --out /tmp/gc  # CPU smoke run of the same code paths

What it measures (each case that cannot run here, e.g. no TensorRT, is listed with the reason):

1. parity on the bundled frames (``rpl_perception/samples``, images and drive clip) at the first
   ``--sizes`` entry: each backend and precision against PyTorch fp32 on the same device, as the
   anomaly map's max / p99 / mean absolute error, label agreement, and the score's dtype;
2. speed at each ``--sizes`` × ``--batches`` (default 1024x512 and 2048x1024, batch 1 and 8):
   median / p95 ms per batch (upload → network and scoring → download, device synchronised),
   frames per second, and device memory the backend reports;
3. one training step (RPL + CoroCL, ``rpl_training``) on the device: median ms per step.

Backends: torch fp32/fp16 (autocast; scores fp32), onnxruntime fp32 (CUDA provider), tensorrt
fp32/fp16, all built through :class:`rpl_perception.backends.DeploymentSpec` exactly as the node
builds them. TensorRT engines are cached in ``--cache-dir`` (the first run builds them: minutes).
``--budget-s`` (default 420) stops starting new speed cases once spent, so the whole run stays
under 8 minutes; skipped cases say so. With ``--device cpu`` the defaults shrink (256x128,
batches 1 and 2, fewer frames) so that every code path runs on a CPU in about a minute.

Needs this repository's packages importable (``pip install -e . -e ./training``, or their
dependencies: numpy, opencv-python-headless, safetensors, onnx, tqdm next to torch and
onnxruntime); ``--deps DIR`` puts a folder of extra packages first on ``sys.path``. Missing
ones are named before anything runs.
"""

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("numpy", "torch", "cv2", "safetensors", "onnx", "tqdm")
OPTIONAL = ("onnxruntime", "tensorrt", "pycuda")
CANDIDATES = (("torch", "fp32"), ("torch", "fp16"), ("onnxruntime", "fp32"), ("tensorrt", "fp32"),
              ("tensorrt", "fp16"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda", help="cuda[:N] (default), or cpu for a smoke run")
    p.add_argument("--sizes", nargs="+", default=None, metavar="WxH",
                   help="network sizes (default 1024x512 2048x1024; cpu: 256x128)")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 8 (cpu: 1 2)")
    p.add_argument("--frames", type=int, default=None, help="timed batches per case (default 30; cpu: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 5; cpu: 1)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 8; cpu: 2)")
    p.add_argument("--train-crop", default=None, metavar="WxH", help="training crop (default 1024x512; cpu: 256x128)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 10; cpu: 2)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting speed cases after this")
    p.add_argument("--cache-dir", type=Path, default=None, help="ONNX files and engines (default: --out/cache)")
    p.add_argument("--deps", type=Path, default=None, help="a folder of extra packages, put first on sys.path")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = dict(sizes=["256x128"] if cpu else ["1024x512", "2048x1024"], batches=[1, 2] if cpu else [1, 8],
                    frames=3 if cpu else 30, warmup=1 if cpu else 5, train_batch=2 if cpu else 8,
                    train_crop="256x128" if cpu else "1024x512", train_steps=2 if cpu else 10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cache_dir = args.cache_dir or args.out / "cache"
    return args


def preflight(deps=None):
    """Put the repository (and ``deps``) on sys.path; {module: version or None}; exit 2 if required ones miss."""
    for path in (deps, REPO / "training", REPO):
        if path is not None and str(path) not in sys.path:
            sys.path.insert(0, str(path))
    found = {}
    for name in REQUIRED + OPTIONAL + ("rpl_training",):
        try:
            module = importlib.import_module(name)
            # tensorrt-stubs alone make an importable 'tensorrt' folder without a version
            found[name] = str(getattr(module, "__version__", None) or "present without a version (stubs?)")
        except Exception as exc:  # noqa: BLE001 - a broken install is as missing as an absent one
            found[name] = None if isinstance(exc, ImportError) else f"broken: {exc}"
    missing = [n for n in REQUIRED if not found[n] or found[n].startswith("broken")]
    if missing:
        pip = {"cv2": "opencv-python-headless"}
        print(f"gpu_check: missing {', '.join(missing)}: pip install "
              + " ".join(pip.get(n, n) for n in missing) + " (or --deps DIR)", file=sys.stderr)
        raise SystemExit(2)
    return found


def parse_size(text):
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def bundled_frames():
    folder = REPO / "rpl_perception" / "samples"
    return sorted(folder.glob("images/*.jpg")) + sorted(folder.glob("drive/*.jpg"))


def make_backend(name, precision, device, size, max_batch, cache_dir):
    from rpl_perception.backends import DeploymentSpec
    from rpl_perception.segmenter import AnomalySegmenter

    spec = DeploymentSpec(backend=name, device=device, precision=precision, network_size=size,
                          batch=(1, max_batch, max_batch), cache_dir=cache_dir)
    return AnomalySegmenter.from_spec(spec).backend


def timed(backend, batch, warmup, frames):
    """Median / p95 ms per batch of upload → run → download, device synchronised."""
    import numpy as np

    def once():
        started = time.perf_counter()
        backend.download(backend.run(backend.upload(batch)))
        backend.synchronize()
        return time.perf_counter() - started

    for _ in range(warmup):
        once()
    ms = np.array([once() for _ in range(frames)]) * 1000
    median, p95 = float(np.median(ms)), float(np.percentile(ms, 95))
    return {"median_ms": median, "p95_ms": p95, "fps": 1000.0 * len(batch) / median}


def parity(reference, candidate, batch):
    import numpy as np

    labels, anomaly = candidate(batch)
    error = np.abs(anomaly.astype(np.float64) - reference[1])
    return {"anomaly_dtype": str(anomaly.dtype), "anomaly_max_abs_error": float(error.max()),
            "anomaly_p99_abs_error": float(np.percentile(error, 99)),
            "anomaly_mean_abs_error": float(error.mean()),
            "label_agreement": float((labels == reference[0]).mean())}


def training_step(device, batch_size, crop, steps):
    """Median ms of one RPL + CoroCL step (forward, losses, backward, Adam) on synthetic data."""
    import numpy as np
    import torch

    from rpl_training.config import DEFAULTS
    from rpl_training.losses import OOD_LABEL
    from rpl_training.train import RPLTrainingModel, build_network, build_optimizer, forward_losses

    torch.manual_seed(0)
    train_cfg = DEFAULTS["train"]
    network, projector, meta = build_network(DEFAULTS["model"])
    model = RPLTrainingModel(network, projector, meta.mean, meta.std,
                             num_inlier=meta.num_inlier).to(device).train()
    optimizer = build_optimizer(network, projector, train_cfg)
    width, height = crop
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, height, width, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, meta.num_inlier, (batch_size, height, width), generator=generator)
    labels[:, height // 4: height // 2, width // 4: width // 2] = OOD_LABEL  # a pasted "object"
    batch = {"image": images, "label": labels, "context": images.flip(0), "context_label": labels.flip(0)}
    batch = {k: v.to(device) for k, v in batch.items()}
    amp = torch.device(device).type == "cuda"

    def step():
        started = time.perf_counter()
        loss, _ = forward_losses(model, batch, use_corocl=True, train_cfg=train_cfg,
                                 generator=torch.Generator().manual_seed(1), amp=amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if amp:
            torch.cuda.synchronize(device)
        return time.perf_counter() - started, float(loss.detach())

    step()  # warm-up
    times, losses = zip(*(step() for _ in range(steps)))
    return {"batch": batch_size, "crop": f"{width}x{height}", "amp": amp,
            "median_ms": float(np.median(times) * 1000), "loss_finite": bool(np.isfinite(losses).all())}


def run(args):
    import numpy as np
    import torch

    from rpl_perception.parity import sample_batch

    started = time.perf_counter()
    versions = preflight(args.deps)
    device = args.device
    on_cpu = device == "cpu"
    report = {"device": device, "gpu": None if on_cpu else torch.cuda.get_device_name(device),
              "python": platform.python_version(), "versions": versions,
              "sizes": args.sizes, "batches": args.batches, "parity": [], "speed": [], "skipped": [],
              "training": None}
    candidates = [c for c in CANDIDATES if not (on_cpu and (c[0] == "tensorrt" or c[1] == "fp16"))]
    report["skipped"] += [{"case": f"{n} {p}", "reason": "GPU only"} for n, p in CANDIDATES
                          if (n, p) not in candidates]
    sizes = [parse_size(s) for s in args.sizes]
    max_batch = max(args.batches)
    backends = {}  # (name, precision, size) → backend, or the reason it could not start

    def backend_for(name, precision, size):
        key = (name, precision, size)
        if key not in backends:
            try:
                backends[key] = make_backend(name, precision, device, size, max_batch, args.cache_dir)
            except Exception as exc:  # noqa: BLE001 - record and go on with the others
                backends[key] = f"{type(exc).__name__}: {exc}"
                report["skipped"].append({"case": f"{name} {precision} {size[0]}x{size[1]}",
                                          "reason": backends[key]})
        return backends[key]

    # 1. parity on the bundled frames, against torch fp32 on the same device
    size = sizes[0]
    frames = sample_batch(size, len(bundled_frames()), images=bundled_frames())
    reference_backend = backend_for("torch", "fp32", size)
    reference = [np.concatenate(parts) for parts in zip(
        *(reference_backend(frames[i:i + max_batch]) for i in range(0, len(frames), max_batch)))]
    for name, precision in candidates:
        backend = backend_for(name, precision, size)
        if isinstance(backend, str):
            continue
        outputs = [backend(frames[i:i + max_batch]) for i in range(0, len(frames), max_batch)]
        stacked = tuple(np.concatenate(parts) for parts in zip(*outputs))
        report["parity"].append({"backend": name, "precision": precision, "size": f"{size[0]}x{size[1]}",
                                 "frames": len(frames), **parity(reference, lambda _, out=stacked: out, frames)})
    # 2. speed
    for size in sizes:
        for batch_size in args.batches:
            batch = sample_batch(size, batch_size, images=bundled_frames())
            for name, precision in candidates:
                case = f"{name} {precision} {size[0]}x{size[1]} batch {batch_size}"
                if time.perf_counter() - started > args.budget_s:  # checked before any build too
                    report["skipped"].append({"case": case, "reason": f"time budget {args.budget_s:.0f} s spent"})
                    continue
                backend = backend_for(name, precision, size)
                if isinstance(backend, str):
                    continue
                if hasattr(torch, "cuda") and not on_cpu:
                    torch.cuda.reset_peak_memory_stats(device)
                result = timed(backend, batch, args.warmup, args.frames)
                memory = backend.peak_device_memory()
                report["speed"].append({"backend": name, "precision": precision, "size": f"{size[0]}x{size[1]}",
                                        "batch": batch_size, **result,
                                        "device_mb": None if memory is None else memory / 2 ** 20,
                                        "description": backend.describe()})
    # 3. one training step
    try:
        report["training"] = training_step(device, args.train_batch, parse_size(args.train_crop), args.train_steps)
    except Exception as exc:  # noqa: BLE001
        report["skipped"].append({"case": "training step", "reason": f"{type(exc).__name__}: {exc}"})
    report["wall_s"] = time.perf_counter() - started
    return report


def markdown(report) -> str:
    def cell(value, fmt="{:.3g}"):
        return "n/a" if value is None else fmt.format(value)

    lines = [f"# GPU check: {report['gpu'] or 'CPU smoke run'} ({report['device']})", "",
             f"torch {report['versions'].get('torch')}, onnxruntime {report['versions'].get('onnxruntime')}, "
             f"TensorRT {report['versions'].get('tensorrt')}; {report['wall_s']:.0f} s", "",
             "## Parity against torch fp32 (bundled frames)", "",
             "| backend | precision | size | anomaly max abs err | p99 | mean | labels equal | score dtype |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["parity"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['size']} | {cell(r['anomaly_max_abs_error'])} | "
                     f"{cell(r['anomaly_p99_abs_error'])} | {cell(r['anomaly_mean_abs_error'])} | "
                     f"{100 * r['label_agreement']:.3f} % | {r['anomaly_dtype']} |")
    lines += ["", "## Speed (upload → network + scoring → download, per batch)", "",
              "| backend | precision | size | batch | median ms | p95 ms | fps | device MB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["speed"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['size']} | {r['batch']} | {r['median_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {r['fps']:.1f} | {cell(r['device_mb'], '{:.0f}')} |")
    training = report["training"]
    lines += ["", "## Training step (RPL + CoroCL, synthetic batch)", ""]
    lines.append("not run (see skipped)" if training is None else
                 f"batch {training['batch']} at {training['crop']}, amp {training['amp']}: "
                 f"{training['median_ms']:.1f} ms per step (loss finite: {training['loss_finite']})")
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['case']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
