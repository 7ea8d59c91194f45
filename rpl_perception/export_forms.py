"""Exactly equivalent forms of a few torch ops, substituted while tracing for ONNX export.

ESPNetv2's pyramid pooling uses adaptive average pooling to sizes that need not divide the
input, which ONNX cannot express. For fixed input and output sizes it is a fixed separable
linear map ``P_h · X · P_wᵀ`` (PyTorch's bins ``[⌊i·n/m⌋, ⌈(i+1)·n/m⌉)``), which
:func:`exportable_adaptive_avg_pool2d` computes with small matmuls. :class:`ExportForms`
substitutes it, and a few more equivalent rewrites that ONNX Runtime runs faster, only while
tracing (it intercepts ``F.adaptive_avg_pool2d``, which ESPNetv2's pooling hook calls); eager
PyTorch is untouched. :mod:`rpl_perception.export` (the deployed model) and rpl_training's frozen
pass (ONNX Runtime in the data loader) export under it.
"""

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["adaptive_pool_matrix", "exportable_adaptive_avg_pool2d", "ExportForms"]


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) averaging matrix of 1-D adaptive average pooling.

    Row i averages the bin ``[⌊i·n_in/n_out⌋, ⌈(i+1)·n_in/n_out⌉)``, PyTorch's definition
    (``aten/src/ATen/native/AdaptiveAveragePooling.cpp``: start_index / end_index).
    """
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"pooling sizes must be positive, got {n_in} → {n_out}")
    i = torch.arange(n_out)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    j = torch.arange(n_in)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return (inside.double() / (end - start)[:, None].double()).float()


def _pool_axis(x: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """Adaptive-average-pool (B, C, H, W) along H (axis 2) or W (axis 3) with a matmul.

    With g = gcd(n_in, n_out), n_in = g·p and n_out = g·q, no bin crosses a block of p inputs
    (bin i = k·q + r starts at k·p + ⌊r·p/q⌋ and ends by k·p + p), so the (n_out, n_in) matrix
    is block-diagonal with g copies of the (q, p) matrix: reshape to blocks and multiply by
    that small matrix, instead of a dense n_out × n_in product.
    """
    _, c, h, w = (int(v) for v in x.shape)  # constants, also when tracing a dynamic batch
    n_in = (h, w)[axis - 2]
    if n_in == n_out:
        return x
    g = math.gcd(n_in, n_out)
    p, q = n_in // g, n_out // g
    m = adaptive_pool_matrix(p, q).to(x.dtype)
    if axis == 3:
        return torch.matmul(x.reshape(-1, c, h, g, p), m.t()).reshape(-1, c, h, n_out)
    return torch.matmul(m, x.reshape(-1, c, g, p, w)).reshape(-1, c, n_out, w)


def exportable_adaptive_avg_pool2d(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` for (B, C, H, W) as MatMul/Reshape (ONNX-exportable).

    Exact up to float rounding (≈1e-7): the same bins, summed by a matmul with 1/count weights.
    The batch dimension stays free (reshapes use −1 for it), so dynamic-batch export works.
    """
    out_h, out_w = size
    return _pool_axis(_pool_axis(x, 2, int(out_h)), 3, int(out_w))


def _prelu_as_batch_norms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU(x) = relu(x) + (−a)·relu(−x), per-channel products written as inference-mode BN."""
    channels = int(x.shape[1])
    slopes = weight.reshape(-1).expand(channels) if weight.numel() == 1 else weight.reshape(-1)
    zeros, ones = torch.zeros_like(slopes), torch.ones_like(slopes)

    def scale(t, factors):  # (t − 0) / √(1 + 0) · factors + 0
        return F.batch_norm(t, zeros, ones, factors, zeros, training=False, eps=0.0)

    return torch.relu(x) + scale(torch.relu(scale(x, -ones)), -slopes)


def _arg(args, kwargs, position: int, name: str, *default):
    """Argument ``name`` of a torch call, passed by position or keyword."""
    if len(args) > position:
        return args[position]
    return kwargs[name] if not default else kwargs.get(name, default[0])


def _channel_slice(index) -> bool:
    """``[:, a:b]``: all of dim 0, a unit-step range of dim 1, nothing else."""
    return (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
            and isinstance(index[1], slice) and index[1].step in (None, 1))


class ExportForms(TorchFunctionMode):
    """Rewrite ops, while tracing for export, into exactly equivalent exportable/faster forms.

    - ``F.adaptive_avg_pool2d`` to a size that does not divide the input (ONNX has no such op)
      → :func:`exportable_adaptive_avg_pool2d`; to a size that does → ``avg_pool2d`` with
      kernel = stride = input/output (the same bins); global pooling → the mean of the row
      means (ONNX Runtime's blocked-layout GlobalAveragePool accumulates all H·W values in one
      float32 sum and was ~2e-4 relative off at 256×512, enough to break parity downstream).
    - ``torch.prelu`` → ``relu(x) + (−a)·relu((−1)·x)`` with the two per-channel products as
      BatchNormalization (mean 0, variance 1, ε 0): the same values (products by −1 and
      relu(x) + 0 are exact). ONNX Runtime's CPU PRelu kernel is slow and breaks its blocked
      (NCHWc) layout, which BatchNormalization keeps.
    - ``torch.logsumexp`` → ``m + log Σ exp(x − m)``, m = max: the definition PyTorch computes,
      spelt out because ONNX Runtime's ReduceLogSumExp over the channel axis is slow; a sum
      over the channels of (N, C, H, W) is a 1×1 convolution with ones (the same sum in
      another order, so equal to ~1e-7 relative; ONNX Runtime's ReduceSum over that axis is
      slower than its convolution).
    - a channel slice ``[:, a:b]`` of an ``F.interpolate`` result → the interpolation of the
      slice (interpolation never mixes channels): the model keeps 19 of 20 logit channels,
      and this saves a full-resolution copy; the unused full resize drops out of the graph.
      A slice of all channels is dropped (ONNX Runtime would copy the tensor).
    - the max inside that logsumexp, when the same tensor's argmax over the same dim was taken
      (the labels, for the closed-set scores) → the value at the argmax (GatherElements), which
      is the max exactly, instead of a second reduction over the channels.

    With ``dynamic_size`` a size-dependent pool raises ``ValueError`` instead: it is a different
    linear operator for every input size and cannot serve a symbolic size.
    """

    def __init__(self, dynamic_size: bool = False):
        super().__init__()
        self.dynamic_size = dynamic_size
        self._interpolated = {}  # id(result) → (result, args, kwargs); result kept alive
        self._argmax = {}  # (id(input), dim) → (input, indices); input kept alive
        self._rewrites = {
            F.adaptive_avg_pool2d: self._adaptive_avg_pool2d, torch.prelu: self._prelu,
            F.interpolate: self._interpolate, torch.Tensor.__getitem__: self._getitem,
            torch.argmax: self._argmax_of, torch.Tensor.argmax: self._argmax_of,
            torch.logsumexp: self._logsumexp,
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rewrite = self._rewrites.get(func)
        out = NotImplemented if rewrite is None else rewrite(func, args, kwargs)
        return func(*args, **kwargs) if out is NotImplemented else out

    # Each rewrite returns NotImplemented to leave the call as it is. Inside them this mode is
    # off (torch pops it while a handler runs), so they call torch functions directly.

    def _adaptive_avg_pool2d(self, func, args, kwargs):
        x, size = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "output_size")
        size = (size, size) if isinstance(size, int) else tuple(size)
        # Sizes may come in as traced tensors (under a dynamic batch every shape is traced);
        # the pooling operator needs them as the constants they are.
        size = tuple(int(v) for v in size)
        in_size = tuple(int(v) for v in x.shape[-2:])
        if size == (1, 1):  # the mean of the row means (see the class docstring)
            return x.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        if any(n % m for n, m in zip(in_size, size)):
            if self.dynamic_size:
                raise ValueError(
                    "dynamic image size cannot be exported for this model: its adaptive average "
                    f"pooling {in_size} → {size} (ESPNetv2's pyramid pooling) is a different "
                    "linear operator for every input size. Export one ONNX file per network size "
                    "(--size WxH); dynamic batch is supported.")
            return exportable_adaptive_avg_pool2d(x, size)
        kernel = tuple(n // m for n, m in zip(in_size, size))  # even bins: needs no shape inference
        return F.avg_pool2d(x, kernel, stride=kernel)

    def _prelu(self, func, args, kwargs):
        x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        if x.dim() < 2:  # BatchNormalization needs (N, C, …)
            return NotImplemented
        return _prelu_as_batch_norms(x, weight)

    def _interpolate(self, func, args, kwargs):
        out = func(*args, **kwargs)
        self._interpolated[id(out)] = (out, args, kwargs)
        return out

    def _getitem(self, func, args, kwargs):
        tensor, index = args
        if not _channel_slice(index):
            return NotImplemented
        channels = range(int(tensor.shape[1]))[index[1]]
        if channels == range(int(tensor.shape[1])):  # all channels: ONNX Runtime would copy
            return tensor
        if id(tensor) not in self._interpolated:
            return NotImplemented
        _, iargs, ikwargs = self._interpolated[id(tensor)]
        ikwargs = dict(ikwargs)
        source = iargs[0] if iargs else ikwargs.pop("input")
        return F.interpolate(source[index], *iargs[1:], **ikwargs)

    def _argmax_of(self, func, args, kwargs):
        out = func(*args, **kwargs)
        x, dim = args[0], _arg(args, kwargs, 1, "dim", None)
        if isinstance(dim, int) and not _arg(args, kwargs, 2, "keepdim", False):
            self._argmax[(id(x), dim % x.dim())] = (x, out)
        return out

    def _logsumexp(self, func, args, kwargs):
        x, dim = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "dim")
        if not isinstance(dim, int):  # the scores reduce one dim; leave anything else alone
            return NotImplemented
        found = self._argmax.get((id(x), dim % x.dim()))
        if found is None:
            m = x.amax(dim=dim, keepdim=True)
        else:
            m = x.gather(dim, found[1].unsqueeze(dim))
        shifted = torch.exp(x - m)
        if x.dim() == 4 and dim % 4 == 1:  # channel sum as a 1×1 convolution with ones
            total = F.conv2d(shifted, torch.ones(1, int(x.shape[1]), 1, 1, dtype=x.dtype))
        else:
            total = shifted.sum(dim=dim, keepdim=True)
        out = m + torch.log(total)
        return out if _arg(args, kwargs, 2, "keepdim", False) else out.squeeze(dim)
