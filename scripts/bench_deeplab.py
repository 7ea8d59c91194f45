"""Per-frame latency of the DeepLabV3+ models with their RPL branch; prints a table.

    python scripts/bench_deeplab.py                       # CPU, 1024×512, fp32
    python scripts/bench_deeplab.py --device cuda         # GPU, 2048×1024, fp32 and fp16

What is timed is what the node runs per frame: :class:`TorchBackend` on an
:class:`AnomalyModel` (uint8 batch in; normalisation, the network with both heads, the
rpl_energy score, Gaussian smoothing and argmax on the device; labels and scores back on the
host). fp16 is the backend's autocast. Weights are random: speed does not depend on them.
"""

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from tqdm import tqdm

from rpl_perception.backends import TorchBackend
from rpl_perception.commands import parse_size
from rpl_perception.models import AnomalyModel, RPLNetwork, get_architecture

MODELS = {
    "wrn38": "deeplabv3plus_wrn38_cityscapes",
    "resnet101_os16": "deeplabv3plus_resnet101_os16_cityscapes",
    "resnet101_os8": "deeplabv3plus_resnet101_os8_cityscapes",
    "resnet50_os16": "deeplabv3plus_resnet50_os16_cityscapes",
}


def build(arch_name):
    arch = get_architecture(arch_name)
    segmenter = arch.build_closed_set()
    network = RPLNetwork(segmenter, arch.build_rpl_branch(segmenter, arch.default_rpl_width, arch.rpl_designs[0]))
    model = AnomalyModel(network, num_inlier=arch.num_inlier, mean=arch.mean, std=arch.std,
                         score="rpl_energy", smoothing_sigma=1.0)
    return model.eval(), sum(p.numel() for p in network.parameters())


def time_backend(backend, batch, warmup, iters, label):
    for _ in range(warmup):
        backend(batch)
    times = []
    for _ in tqdm(range(iters), desc=label, unit="it", leave=False):
        start = time.perf_counter()
        backend(batch)  # returns numpy arrays, so the device has finished
        times.append((time.perf_counter() - start) * 1000 / len(batch))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["wrn38", "resnet101_os16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="WxH (default 1024x512 on CPU, 2048x1024 on CUDA)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "fp16"), default=None,
                        help="default fp32 on CPU, fp32 and fp16 on CUDA")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    cuda = args.device.startswith("cuda")
    width, height = args.size or ((2048, 1024) if cuda else (1024, 512))
    precisions = args.precision or (["fp32", "fp16"] if cuda else ["fp32"])
    if "fp16" in precisions and not cuda:
        parser.error("fp16 runs through CUDA autocast; use --device cuda")
    torch.manual_seed(0)
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)
    device_name = (torch.cuda.get_device_name(torch.device(args.device)) if cuda
                   else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")

    rows = []
    for key in args.models:
        model, params = build(MODELS[key])
        for precision in precisions:
            backend = TorchBackend(model, device=args.device, fp16=precision == "fp16")
            times = time_backend(backend, batch, args.warmup, args.iters, f"{key} {precision}")
            rows.append((key, params / 1e6, precision, statistics.median(times), min(times)))
        del model, backend
        if cuda:
            torch.cuda.empty_cache()

    print(f"\nDeepLabV3+ with RPL branch, {width}x{height}, batch {args.batch}, {device_name}, "
          f"torch {torch.__version__}; {args.iters} timed iterations after {args.warmup} warm-up")
    print(f"{'model':<16}{'params (M)':>11}  {'precision':<10}{'ms/frame (median)':>18}{'ms (min)':>10}{'fps':>7}")
    for key, params, precision, median, best in rows:
        print(f"{key:<16}{params:>11.1f}  {precision:<10}{median:>18.1f}{best:>10.1f}{1000 / median:>7.3g}")


if __name__ == "__main__":
    main()
