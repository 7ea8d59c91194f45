"""Checkpoint adapters: official RPL / RPL+CoroCL files, NVIDIA cityscapes_best.pth, wrapped plain
state dicts, the convert-checkpoint command, and their error messages."""

import numpy as np
import pytest
import torch

from rpl_perception import AnomalySegmenter
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, build_model, load_closed_set, read_checkpoint
from rpl_perception.checkpoint.pytorch_files import (
    WRN38_ARCHITECTURE,
    convert_pytorch_object,
    official_template,
    official_to_groups,
)
from rpl_perception.cli import main as cli_main
from rpl_perception.models.deeplabv3plus import deeplabv3plus_resnet50

PROJ = "branch1.residual_block.proj_head."


def random_state(template, seed=0):
    """Random values for a key → (meta) tensor template: small weights, positive BN variances."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, like in template.items():
        if like.dtype == torch.int64:
            state[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(like.shape, generator=g)
        else:
            state[key] = 0.02 * torch.randn(like.shape, generator=g)
    return state


@pytest.fixture(scope="module")
def official_state():
    return random_state(official_template())


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official_state):
    """An RPL+CoroCL checkpoint as the official engine saves it."""
    path = tmp_path_factory.mktemp("official") / "rev3.pth"
    torch.save({"model": official_state, "optimizer": {"lr": 0.1}, "epoch": 3, "iteration": 120}, path)
    return path


def test_official_file_runs_in_the_segmenter_unchanged(official_file, official_state):
    seg = AnomalySegmenter.from_checkpoint(official_file, network_size=(64, 48))
    assert seg.meta.architecture == WRN38_ARCHITECTURE and seg.meta.rpl_width == 256
    assert seg.score == "rpl_energy"
    assert seg.meta.provenance["format"] == "official-rpl"
    assert seg.meta.provenance["variant"] == "RPL+CoroCL"
    network = seg.network
    pairs = {"branch1.final.6.weight": network.closed_set.final[6].weight,
             "branch1.mod7.block1.convs.conv2.weight": network.closed_set.mod7.block1.convs.conv2.weight,
             "branch1.residual_block.atten_aspp.features.3.0.weight":
                 network.branch.context.aspp.features[3][0].weight,
             "branch1.residual_block.bot_atten_aspp.weight": network.branch.context.bot_aspp.weight,
             "branch1.residual_block.atten_aspp_final.weight": network.branch.residual.weight}
    for key, param in pairs.items():
        assert torch.equal(param, official_state[key]), key
    pred = seg.predict(np.full((30, 50, 3), 128, np.uint8))
    assert pred.labels.shape == pred.anomaly.shape == (30, 50)
    assert pred.labels.max() < 19 and np.isfinite(pred.anomaly).all()


def test_convert_official_to_ours_and_back_is_exact(tmp_path, official_file, official_state):
    ours = tmp_path / "rpl_wrn38.safetensors"
    assert cli_main(["convert-checkpoint", "--from", "official-rpl", str(official_file),
                     "--out", str(ours)]) == 0
    meta, groups = read_checkpoint(ours)
    expected = official_to_groups(official_state)
    assert meta.rpl_width == 256 and meta.score == "rpl_energy"
    for group in ("closed_set", "rpl", "projector"):
        assert groups[group].keys() == expected[group].keys(), group
        assert all(torch.equal(groups[group][k], v) for k, v in expected[group].items()), group
    back = tmp_path / "back.pth"
    assert cli_main(["convert-checkpoint", str(ours), "--to", "official-rpl", "--out", str(back)]) == 0
    model = torch.load(back, map_location="cpu", weights_only=True)["model"]
    assert list(model) == list(official_state)  # the official key order, 302 keys
    assert all(torch.equal(model[k], v) for k, v in official_state.items())


def test_rpl_only_file_in_nested_wrappers_with_data_parallel_prefix(official_state):
    state = {f"module.{k}": v for k, v in official_state.items() if not k.startswith(PROJ)}
    assert len(state) == 300
    meta, groups = convert_pytorch_object({"model_state": {"state_dict": state}, "epoch": 1}, "rpl.pth")
    assert meta.provenance["variant"] == "RPL" and meta.rpl_width == 256
    assert groups["projector"] == {}
    assert len(groups["closed_set"]) == 268 and len(groups["rpl"]) == 32


def test_wrong_official_file_names_format_and_keys(official_state):
    state = dict(official_state)
    del state["branch1.final.6.weight"]
    state["branch1.extra.weight"] = torch.zeros(1)
    state["branch1.bot_fine.weight"] = torch.zeros(48, 64, 1, 1)
    with pytest.raises(CheckpointError) as info:
        convert_pytorch_object({"model": state}, "broken.pth")
    text = str(info.value)
    assert "broken.pth: not a valid 'official-rpl' checkpoint" in text
    assert "missing keys: branch1.final.6.weight" in text
    assert "unexpected keys: branch1.extra.weight" in text
    assert "branch1.bot_fine.weight: file (48, 64, 1, 1) vs model (48, 128, 1, 1)" in text
    # a projector with one of its two tensors is incomplete, not "RPL without projector"
    partial = {k: v for k, v in official_state.items() if k != PROJ + "proj.0.bias"}
    with pytest.raises(CheckpointError, match=f"missing keys: {PROJ}proj.0.bias"):
        convert_pytorch_object(partial, "partial.pth")


def test_forced_format_and_architecture_conflicts_are_named(official_state):
    nvidia_like = {k.removeprefix("branch1."): v for k, v in official_state.items()
                   if "residual_block" not in k}
    with pytest.raises(CheckpointError, match=r"not a valid 'official-rpl' checkpoint .*"
                                              r"missing keys: .*\(300 in all\)"):
        convert_pytorch_object(nvidia_like, "city.pth", fmt="official-rpl")
    with pytest.raises(CheckpointError, match="architecture 'deeplabv3plus_wrn38_cityscapes', "
                                              "expected 'espnetv2_cityscapes'"):
        convert_pytorch_object(official_state, "rev3.pth", architecture="espnetv2_cityscapes")
    with pytest.raises(CheckpointError, match="optionally wrapped in 'model', 'model_state' or "
                                              "'state_dict'; got a dict with keys 'epoch', 'net'"):
        convert_pytorch_object({"epoch": 3, "net": {"w": torch.zeros(1)}}, "odd.pth")
    with pytest.raises(ValueError, match="unknown checkpoint format 'caffe'"):
        convert_pytorch_object(official_state, "rev3.pth", fmt="caffe")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth: not a loadable PyTorch state dict "
                                             r"\(WeightsUnpickler error: Unsupported global: GLOBAL io.open.*"
                                             "weights_only=True"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def nvidia_file(tmp_path_factory, official_state):
    """cityscapes_best.pth as NVIDIA's trainer writes it: DataParallel keys under ``state_dict``,
    the loss weights, no ``num_batches_tracked`` (older PyTorch), metadata next to the weights."""
    state = {"module." + k.removeprefix("branch1."): v for k, v in official_state.items()
             if "residual_block" not in k and not k.endswith("num_batches_tracked")}
    state["module.criterion.nll_loss.weight"] = torch.ones(19)
    path = tmp_path_factory.mktemp("nvidia") / "cityscapes_best.pth"
    torch.save({"state_dict": state, "epoch": 175, "mean_iu": 0.81}, path)
    return path


def test_nvidia_file_is_a_closed_set_segmenter(nvidia_file, official_state):
    seg = load_closed_set(nvidia_file)
    assert type(seg).__name__ == "DeepLabV3PlusWRN38"
    assert not seg.training and all(not p.requires_grad for p in seg.parameters())
    assert torch.equal(seg.aspp.features[1][0].weight, official_state["branch1.aspp.features.1.0.weight"])
    assert int(seg.final[1].num_batches_tracked) == 0  # absent from the file: filled in as BatchNorm does


def test_convert_nvidia_with_init_rpl_is_a_training_start(tmp_path, nvidia_file):
    out = tmp_path / "start.safetensors"
    assert cli_main(["convert-checkpoint", str(nvidia_file), "--from", "nvidia-wrn38", "--init-rpl",
                     "--out", str(out)]) == 0
    meta, groups = read_checkpoint(out)
    assert meta.architecture == WRN38_ARCHITECTURE and meta.provenance["format"] == "nvidia-wrn38"
    assert meta.rpl_width == 256 and meta.score == "energy"  # untrained: not the default score
    assert "untrained" in meta.provenance["rpl"]
    assert len(groups["closed_set"]) == 268  # the loss weights are dropped
    # the branch's ASPP and bottleneck start as exact copies of the closed-set network's
    copies = {k: v for k, v in groups["rpl"].items() if k.startswith("context.")}
    assert len(copies) == 31
    for key, value in copies.items():
        assert torch.equal(value, groups["closed_set"][key.removeprefix("context.")]), key
    assert groups["rpl"]["residual.weight"].shape == (304, 256, 1, 1)
    assert groups["projector"]["weight"].shape == (304, 256, 1, 1)  # rpl_training's nn.Conv2d
    assert torch.equal(groups["projector"]["bias"], torch.zeros(304))


def test_vainf_style_resnet_checkpoint_loads_by_architecture():
    with torch.device("meta"):
        template = deeplabv3plus_resnet50().state_dict()
    state = random_state(template)
    arch = "deeplabv3plus_resnet50_os16_cityscapes"
    meta, groups = convert_pytorch_object({"model_state": state, "cur_itrs": 30000, "best_score": {}},
                                          "best_deeplabv3plus_resnet50_cityscapes_os16.pth", arch)
    assert meta.provenance["format"] == "state-dict" and meta.architecture == arch
    with pytest.raises(CheckpointError, match="ResNet-50 state dict, whose output stride the weights "
                                              "do not record; .*deeplabv3plus_resnet50_os16_cityscapes"):
        convert_pytorch_object({"model_state": state}, "best.pth")
    network = build_model(meta, groups, "vainf")
    assert torch.equal(network.closed_set.backbone.layer4[2].conv3.weight, state["backbone.layer4.2.conv3.weight"])


def test_cli_refuses_official_output_for_other_models(tmp_path, capsys):
    code = cli_main(["convert-checkpoint", str(DEFAULT_CHECKPOINT), "--to", "official-rpl",
                     "--out", str(tmp_path / "x.pth")])
    assert code == 2
    assert "official RPL checkpoints hold a deeplabv3plus_wrn38_cityscapes" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
