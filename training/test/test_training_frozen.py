"""The faster training step: the frozen pass in the data loader (ONNX Runtime or PyTorch) and the
fused losses give the losses and gradients of the step as it was (the whole network in one eager
forward, the losses written term by term as the official code), and where the frozen pass runs."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from rpl_training.config import ConfigError, load_config
from rpl_training.frozen import (
    FROZEN_KEYS,
    FrozenCollate,
    OnnxFrozenPass,
    export_frozen,
    onnxruntime_available,
)
from rpl_training.losses import corocl_loss, rpl_losses
from rpl_training.model import RPLTrainingModel, build_network, forward_losses
from rpl_training.run_state import frozen_in_loader
from rpl_training.sample_stream import IterationBatchSampler, build_dataset
from rpl_training_testdata import CROP_HW, small_config

MEAN = (0.485, 0.456, 0.406)


def _reference_rpl_losses(rpl, closed, target, t=1.0, energy_weight=0.05):
    """The losses as the step computed them before (official ``energy_loss``, channel-first)."""
    ood = target == 254
    inlier = ~ood & (target != 255)
    pseudo = closed.argmax(dim=1)

    def entropy(z):
        q = torch.clamp(torch.softmax(z, dim=1), min=1e-7)
        return -(q * torch.log(q)).sum(dim=1) / t

    ce = F.cross_entropy(rpl, pseudo, reduction="none")[inlier].mean()
    reg = ((entropy(rpl) - entropy(closed)) ** 2)[inlier].mean()
    energy = F.relu(torch.logsumexp(rpl, dim=1))[ood].mean()
    return {"ce": ce, "reg": reg, "energy": energy, "total": ce + reg + energy_weight * energy}


def _reference_step(network, projector, model, batch, cfg):
    """The old step: mixed and context images through the whole network, eager, channel-first."""
    x = model.frozen.closed_set.normalise(torch.cat([batch["image"], batch["context"]]))
    out = network(x)
    n = batch["image"].shape[0]
    projected = F.interpolate(projector(out.embedding), [s // 2 for s in CROP_HW], mode="bilinear",
                              align_corners=True)
    terms = _reference_rpl_losses(out.rpl[:n, :19], out.closed[:n, :19], batch["label"].long())
    contrastive = corocl_loss(projected[:n], batch["label"].long(), projected[n:], batch["context_label"].long(),
                              max_views=int(cfg["train"]["corocl"]["max_views"]),
                              generator=torch.Generator().manual_seed(0))
    return terms, contrastive


def _grads(network):
    grads = [p.grad.clone() for p in network.branch.parameters()]
    for p in network.branch.parameters():
        p.grad = None
    return grads


@pytest.mark.parametrize("design", ["aspp", "pyramid"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_frozen_pass_in_the_loader_gives_the_old_losses_and_gradients(tiny_data, tmp_path, design, backend):
    if backend == "onnxruntime" and not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    cfg = small_config(tiny_data, tmp_path / "run", f"model.rpl_design={design}", "model.rpl_width=32")
    torch.manual_seed(0)
    network, projector, meta = build_network(cfg["model"])
    model = RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier).train()
    frozen = model.frozen
    if backend == "onnxruntime":
        frozen = OnnxFrozenPass(export_frozen(model.frozen.closed_set, model.frozen.encoder, tmp_path / "onnx", CROP_HW))
    dataset = build_dataset(cfg["data"], MEAN, 0)
    samples = [dataset[k] for k in IterationBatchSampler(len(dataset), 4, 1, seed=0).keys(0)]
    batch = FrozenCollate(frozen, with_context=True)(samples)
    batch.pop("skipped")
    assert set(FROZEN_KEYS) | {"context_deep"} <= set(batch)
    assert batch["pseudo"].dtype == torch.uint8 and batch["pseudo"].shape == batch["label"].shape
    assert (batch["label"] == 254).any()  # the batch holds pasted objects: every term is non-zero

    loss, terms = forward_losses(model, batch, use_corocl=True, train_cfg=cfg["train"],
                                 generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = _grads(network)
    reference, contrastive = _reference_step(network, projector, model, batch, cfg)
    (reference["total"] + contrastive).backward()
    for key in ("ce", "reg", "energy", "total"):
        assert terms[key].item() == pytest.approx(reference[key].item(), rel=2e-5), key
        assert terms[key].item() > 0, key
    assert terms["corocl"].item() == pytest.approx(contrastive.item(), rel=2e-5)
    # another runtime's rounding: all gradients compared as one vector (a bias feeding a training-mode
    # BatchNorm has a gradient of 0 up to rounding noise, which no element-wise tolerance fits)
    mine, theirs = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in _grads(network)])
    assert torch.linalg.vector_norm(mine - theirs) <= 1e-4 * torch.linalg.vector_norm(theirs)


def test_compiled_losses_equal_the_eager_ones():
    g = torch.Generator().manual_seed(3)
    rpl = torch.randn(2, 19, 16, 24, generator=g, requires_grad=True)
    closed = torch.randn(2, 19, 16, 24, generator=g) * 4
    target = torch.randint(0, 19, (2, 16, 24), generator=g)
    target[:, 4:9, 5:12] = 254
    target[1, 0] = 255
    eager = rpl_losses(rpl, closed, target, t=2.0)
    eager["total"].backward()
    eager_grad, rpl.grad = rpl.grad.clone(), None
    compiled = rpl_losses(rpl, closed, target, t=2.0, compiled=True)
    compiled["total"].backward()
    for key in eager:
        assert compiled[key].item() == pytest.approx(eager[key].item(), rel=1e-5), key
    torch.testing.assert_close(rpl.grad, eager_grad, rtol=1e-4, atol=1e-7)
    reference = _reference_rpl_losses(rpl.detach(), closed, target, t=2.0)
    assert eager["total"].item() == pytest.approx(reference["total"].item(), rel=1e-5)
    assert math.isfinite(compiled["energy"].item()) and compiled["energy"].item() > 0


def test_where_the_frozen_pass_runs(tiny_data, tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def config(*overrides):
        return small_config(tiny_data, tmp_path / "run", *overrides)

    expected = "onnxruntime" if onnxruntime_available() else "torch"
    assert frozen_in_loader(config("data.num_workers=1"), cpu) == expected
    assert frozen_in_loader(config("data.num_workers=0"), cpu) is None  # nothing to overlap with
    assert frozen_in_loader(config("data.num_workers=2"), cuda) is None  # on the GPU, inside the step
    assert frozen_in_loader(config("data.num_workers=1", "train.frozen.backend=torch"), cpu) == "torch"
    assert frozen_in_loader(config("data.num_workers=0", "train.frozen.where=loader"), cpu) == expected
    assert frozen_in_loader(config("data.num_workers=1", "train.frozen.where=model"), cpu) is None
    with pytest.raises(ConfigError, match="needs train.device cpu"):
        frozen_in_loader(config("train.frozen.where=loader"), cuda)
    with pytest.raises(ConfigError, match=r"train.frozen.where must be one of auto, model, loader"):
        load_config(None, ["train.frozen.where=gpu"], data={"inlier": {"root": "x"}, "outlier": {"root": "y"}})


def test_onnx_pass_pickles_without_sessions_and_frozen_modules_stay_in_eval(tiny_data, tmp_path):
    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    network, projector, meta = build_network(small_config(tiny_data, tmp_path / "run")["model"])
    model = RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier).train()
    assert network.branch.training and not network.closed_set.training
    assert not any(m.training for m in model.frozen.modules())
    onnx_pass = OnnxFrozenPass(export_frozen(model.frozen.closed_set, model.frozen.encoder, tmp_path, CROP_HW))
    images = torch.randint(0, 256, (2, *CROP_HW, 3), dtype=torch.uint8)
    first = onnx_pass(images)
    copy = pickle.loads(pickle.dumps(onnx_pass))  # a spawned loader worker opens its own sessions
    assert copy._sessions is None and onnx_pass._sessions is not None
    again = copy(images, images)
    assert again["context_deep"].shape == first["deep"].shape
    torch.testing.assert_close(again["deep"], first["deep"])
    expected = model.frozen(images)
    torch.testing.assert_close(first["feat"], expected["feat"], rtol=1e-4, atol=1e-4)
    assert (first["pseudo"] == expected["pseudo"]).float().mean() > 0.999
