"""DeepLabV3+ (WiderResNet38 from the fact sheet, ResNet-50/101) and its official RPL attachment."""

import pytest
import torch
import torch.nn.functional as F

from rpl_perception.checkpoint import CheckpointMeta, build_model
from rpl_perception.checkpoint.pytorch_files import (
    WRN38_ARCHITECTURE,
    groups_to_official,
    official_template,
    official_to_groups,
)
from rpl_perception.models import RPLNetwork, get_architecture
from rpl_perception.models.deeplabv3plus import deeplabv3plus_resnet50, deeplabv3plus_resnet101

ODD_SIZE = (65, 97)  # (H, W): odd on both sides, not a multiple of any stride
WRN38_ODD_SIZE = (41, 57)  # smaller for the 168 M-parameter WRN38: odd after pool2 and pool3 too


def read_tsv(path):
    """The fact sheet's key list: (key, shape, dtype) per line."""
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip()), dtype))
    return rows


def random_official_state(rows, seed=0):
    """Random but well-scaled values for every official key: He-scaled convolutions and BatchNorm
    statistics far from identity, so that every layer (and the eval-mode BN path) shapes the output."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in rows:
        if dtype == "int64":
            state[key] = torch.tensor(7)
        elif key.endswith("running_var") or (key.endswith("weight") and len(shape) == 1):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:  # BN bias / running_mean, the projector bias
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def reference_forward(sd, x):
    """The official ``Network(x)`` in eval mode, written straight from the fact sheet (sections
    2–6) on the official keys, with functional ops: an independent check of our modules and of the
    key mapping. Returns (out1, out2, r) where r is what ``proj_head`` reads."""
    def bn_relu(t, p):
        return F.relu(F.batch_norm(t, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"],
                                   sd[p + "bias"], False, 0.0, 1e-5))

    def conv(t, p, stride=1, dilation=1):
        w = sd[p + "weight"]
        return F.conv2d(t, w, sd.get(p + "bias"), stride, dilation * (w.shape[-1] // 2), dilation)

    def up(t, size):
        return F.interpolate(t, size, mode="bilinear", align_corners=True)

    b = "branch1."
    t = conv(x, b + "mod1.conv1.")
    # stage → (dilation, stride of block1), fact sheet section 2
    stages = {2: (1, 1), 3: (1, 1), 4: (1, 2), 5: (2, 1), 6: (4, 1), 7: (4, 1)}
    for mod, (dil, first_stride) in stages.items():
        if mod in (2, 3):
            t = F.max_pool2d(t, 3, 2, 1)
        block = 1
        while f"{b}mod{mod}.block{block}.bn1.0.weight" in sd:
            p = f"{b}mod{mod}.block{block}."
            stride = first_stride if block == 1 else 1
            a = bn_relu(t, p + "bn1.0.")
            shortcut = conv(a, p + "proj_conv.", stride) if p + "proj_conv.weight" in sd else t
            if p + "convs.conv3.weight" in sd:
                y = conv(a, p + "convs.conv1.", stride)
                y = conv(bn_relu(y, p + "convs.bn2.0."), p + "convs.conv2.", dilation=dil)
                y = conv(bn_relu(y, p + "convs.bn3.0."), p + "convs.conv3.")
            else:
                y = conv(a, p + "convs.conv1.", stride, dil)
                y = conv(bn_relu(y, p + "convs.bn2.0."), p + "convs.conv2.", dilation=dil)
            t = y + shortcut
            block += 1
        if mod == 2:
            m2 = t
    f7 = t

    def aspp(p):
        pooled = bn_relu(conv(f7.mean((2, 3), keepdim=True), p + "img_conv.0."), p + "img_conv.1.")
        outs = [up(pooled, f7.shape[-2:])]
        for i, rate in enumerate((1, 12, 24, 36)):
            outs.append(bn_relu(conv(f7, f"{p}features.{i}.0.", dilation=rate), f"{p}features.{i}.1."))
        return torch.cat(outs, 1)

    def final(t):
        t = bn_relu(conv(t, b + "final.0."), b + "final.1.")
        t = bn_relu(conv(t, b + "final.3."), b + "final.4.")
        return conv(t, b + "final.6.")

    size = m2.shape[-2:]
    dec0 = torch.cat([conv(m2, b + "bot_fine."), up(conv(aspp(b + "aspp."), b + "bot_aspp."), size)], 1)
    rb = b + "residual_block."
    r = up(conv(aspp(rb + "atten_aspp."), rb + "bot_atten_aspp."), size)
    res = conv(r, rb + "atten_aspp_final.")
    return up(final(dec0), x.shape[-2:]), up(final(dec0 + res), x.shape[-2:]), r


@pytest.fixture(scope="module")
def tsv_rows(shared_dir):
    return read_tsv(shared_dir / "specs" / "wrn38_rpl_state_dict.tsv")


@pytest.fixture(scope="module")
def official_state(tsv_rows):
    return random_official_state(tsv_rows)


@pytest.fixture(scope="module")
def wrn38(official_state):
    """Our WRN38 + RPL branch + projector, strictly loaded from the official keys."""
    arch = get_architecture(WRN38_ARCHITECTURE)
    groups = official_to_groups(official_state)
    meta = CheckpointMeta.for_architecture(arch, rpl_width=arch.default_rpl_width)
    network = build_model(meta, groups, "random official state")
    projector = torch.nn.Conv2d(256, 304, 1)  # the CoroCL projector, as rpl_training builds it
    projector.load_state_dict(groups["projector"], strict=True)
    return network, projector.eval()


def test_official_key_template_is_the_fact_sheet_tsv(tsv_rows):
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in official_template().items()]
    assert ours == tsv_rows  # every key, in order, with shape and dtype
    assert list(official_template(with_projector=False)) == [r[0] for r in tsv_rows if "proj_head" not in r[0]]


def test_wrn38_parameter_counts_match_the_fact_sheet():
    with torch.device("meta"):
        arch = get_architecture(WRN38_ARCHITECTURE)
        closed_set = arch.build_closed_set()
        branch = arch.build_rpl_branch(closed_set, arch.default_rpl_width)
        projector = torch.nn.Conv2d(branch.context_channels, closed_set.head_channels, 1)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(closed_set) == 137_103_936
    assert sum(count(getattr(closed_set, f"mod{i}")) for i in range(1, 8)) == 105_062_720
    assert count(branch) == 30_816_768
    assert count(branch.residual) == 77_824
    assert count(projector) == 78_128


def test_strict_load_of_official_keys_and_exact_map_back(wrn38, official_state):
    network, projector = wrn38
    back = groups_to_official({"closed_set": network.closed_set.state_dict(),
                               "rpl": network.branch.state_dict(), "projector": projector.state_dict()})
    assert list(back) == list(official_state)
    for key, value in official_state.items():
        assert torch.equal(back[key], value), key


def test_wrn38_computes_the_official_function_at_an_odd_size(wrn38, official_state):
    network, projector = wrn38
    x = torch.randn(1, 3, *WRN38_ODD_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = network(x)
        plain = network.closed_set(x)
        out1, out2, r = reference_forward(official_state, x)
        proj = projector(out.embedding)
        ref_proj = F.conv2d(r, official_state["branch1.residual_block.proj_head.proj.0.weight"],
                            official_state["branch1.residual_block.proj_head.proj.0.bias"])
    assert out.closed.shape == out.rpl.shape == (1, 19, *WRN38_ODD_SIZE)
    assert out.embedding.shape == (1, 256, 21, 29)  # at the mod2 (decoder) size ⌈H/2⌉ × ⌈W/2⌉
    assert proj.shape == (1, 304, 21, 29)
    # ỹ is the closed-set network's own output, bit for bit, with or without the branch
    assert torch.equal(out.closed, plain)
    scale = out1.abs().max()
    assert scale > 0.1 and (out2 - out1).abs().max() > 1e-3 * scale  # the residual matters
    torch.testing.assert_close(out.closed, out1, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(out.rpl, out2, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(proj, ref_proj, rtol=0, atol=1e-5 * ref_proj.abs().max())


def test_wrn38_dilations_and_strides_follow_the_fact_sheet(wrn38):
    seg = wrn38[0].closed_set
    dilations = {f"mod{i}": {m.dilation[0] for m in getattr(seg, f"mod{i}").modules()
                             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
                 for i in range(2, 8)}
    assert dilations == {"mod2": {1}, "mod3": {1}, "mod4": {1}, "mod5": {2}, "mod6": {4}, "mod7": {4}}
    assert seg.mod4.block1.convs.conv1.stride == seg.mod4.block1.proj_conv.stride == (2, 2)
    assert [f[0].dilation[0] for f in seg.aspp.features[1:]] == [12, 24, 36]
    assert [f[0].dilation[0] for f in wrn38[0].branch.context.aspp.features[1:]] == [12, 24, 36]
    assert [seg.mod6.block1.convs.dropout.p, seg.mod7.block1.convs.dropout.p] == [0.3, 0.5]


def test_wrn38_branch_starts_as_a_trainable_copy_of_the_aspp(wrn38):
    network, _ = wrn38
    closed_set = network.closed_set  # frozen by RPLNetwork
    torch.manual_seed(0)
    branch = get_architecture(WRN38_ARCHITECTURE).build_rpl_branch(closed_set, 256)
    for ours, theirs in ((branch.context.aspp, closed_set.aspp), (branch.context.bot_aspp, closed_set.bot_aspp)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    assert all(p.requires_grad for p in branch.parameters())
    assert branch.residual.bias is None and branch.residual.weight.shape == (304, 256, 1, 1)
    # Kaiming-normal fan-in: std sqrt(2 / 256)
    assert abs(branch.residual.weight.std().item() - (2 / 256) ** 0.5) < 0.005
    with pytest.raises(ValueError, match="width is 256; got 64"):
        get_architecture(WRN38_ARCHITECTURE).build_rpl_branch(closed_set, 64)


def test_torchvision_resnet_keys_and_parameter_counts():
    with torch.device("meta"):
        r50, r101 = deeplabv3plus_resnet50(), deeplabv3plus_resnet101()
    # torchvision's resnet50 / resnet101 have 25,557,032 / 44,549,160 parameters, 2,049,000 in fc
    assert sum(p.numel() for p in r50.backbone.parameters()) == 23_508_032
    assert sum(p.numel() for p in r101.backbone.parameters()) == 42_500_160
    keys = r101.state_dict()
    assert keys["backbone.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert keys["backbone.layer3.22.bn3.running_var"].shape == (1024,)
    assert keys["classifier.project.0.weight"].shape == (48, 256, 1, 1)
    assert keys["classifier.aspp.convs.4.1.weight"].shape == (256, 2048, 1, 1)  # image pooling, last
    assert keys["classifier.aspp.project.0.weight"].shape == (256, 1280, 1, 1)
    assert keys["classifier.classifier.3.bias"].shape == (19,)
    assert not any(k.startswith(("backbone.fc", "fc.")) for k in keys)


@pytest.mark.parametrize("output_stride, deep_size, layer4_dilation, rates", [
    (8, (9, 13), 4, [12, 24, 36]),
    (16, (5, 7), 2, [6, 12, 18]),
])
def test_resnet_output_stride_sets_dilations_and_deep_feature_size(output_stride, deep_size,
                                                                   layer4_dilation, rates):
    torch.manual_seed(0)
    seg = deeplabv3plus_resnet50(output_stride=output_stride).eval()
    assert seg.backbone.layer4[1].conv2.dilation == (layer4_dilation,) * 2
    assert [c[0].dilation[0] for c in seg.classifier.aspp.convs[1:4]] == rates
    with torch.no_grad():
        deep, feat = seg.extract_features(torch.randn(1, 3, *ODD_SIZE))
    assert deep.shape == (1, 2048, *deep_size)
    assert feat.shape == (1, 304, 17, 25)  # layer1 size: stride 4


def test_resnet_rpl_attachment_at_the_decoder_input():
    torch.manual_seed(0)
    arch = get_architecture("deeplabv3plus_resnet50_os16_cityscapes")
    closed_set = arch.build_closed_set()
    network = RPLNetwork(closed_set, arch.build_rpl_branch(closed_set, 256)).eval()
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        out = network(x)
        plain = closed_set(x)
        network.branch.residual.weight.zero_()
        zero = network(x)
    assert out.closed.shape == out.rpl.shape == (1, 19, *ODD_SIZE)
    assert out.embedding.shape == (1, 256, 17, 25)
    assert torch.equal(out.closed, plain)
    assert not torch.allclose(out.rpl, out.closed)
    # the residual enters only through the 1×1 onto the 304-channel concat: zero it and ŷ = ỹ
    assert torch.equal(zero.rpl, zero.closed)
    for key, value in closed_set.classifier.aspp.state_dict().items():
        assert torch.equal(network.branch.context.aspp.state_dict()[key], value), key
