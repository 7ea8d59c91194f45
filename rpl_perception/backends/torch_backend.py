"""PyTorch eager backend (CPU, or CUDA with optional fp16 autocast, channels_last and CUDA graphs)."""

from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..models import AnomalyModel

__all__ = ["TorchBackend"]


class TorchBackend:
    """Run an :class:`AnomalyModel` in PyTorch: ``backend(batch) → (labels, anomaly)``.

    On CUDA: ``fp16`` runs the network under fp16 autocast (scores stay fp32), ``channels_last``
    stores the weights NHWC (the uint8 NHWC input already is), and ``cuda_graphs`` captures one
    CUDA graph per batch shape on first use and replays it (saves the per-kernel launch cost).
    """

    name = "torch"

    def __init__(self, model: AnomalyModel, device: str = "cpu", fp16: bool = False,
                 channels_last: bool = False, cuda_graphs: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        on_cuda = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        self.fp16 = fp16 and on_cuda
        self.channels_last = channels_last and on_cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cuda_graphs = cuda_graphs and on_cuda
        self._graphs: Dict[Tuple[int, ...], tuple] = {}

    def describe(self) -> str:
        if self.device.type == "cpu":
            return f"torch {torch.__version__} cpu fp32 ({torch.get_num_threads()} threads)"
        flags = [f for f, on in (("fp16 autocast", self.fp16), ("channels_last", self.channels_last),
                                 ("CUDA graphs", self.cuda_graphs)) if on]
        return f"torch {torch.__version__} {self.device} " + (", ".join(flags) or "fp32")

    def _forward(self, images):
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            return self.model(images)[:2]

    def _graph_for(self, images):
        """(static input, static outputs, graph) for this shape; captured on first use."""
        key = tuple(images.shape)
        if key not in self._graphs:
            static_input = images.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
                for _ in range(3):
                    self._forward(static_input)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_outputs = self._forward(static_input)
            self._graphs[key] = (static_input, static_outputs, graph)
        return self._graphs[key]

    # The three stages, separately callable so that the benchmark can time each.

    def upload(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, images: torch.Tensor):
        if not self.cuda_graphs:
            return self._forward(images)
        static_input, static_outputs, graph = self._graph_for(images)
        static_input.copy_(images)
        graph.replay()
        return static_outputs

    def download(self, outputs) -> Tuple[np.ndarray, np.ndarray]:
        labels, anomaly = outputs
        return labels.cpu().numpy(), anomaly.float().cpu().numpy()

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_device_memory(self) -> Optional[int]:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray):
        return self.download(self.run(self.upload(batch)))
