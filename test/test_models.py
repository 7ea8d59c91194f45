"""ESPNetv2 from the fact sheet, the RPL attachment, and the architecture registry."""

import pytest
import torch

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_closed_set, read_checkpoint
from rpl_perception.models import ESPNetv2Segmentation, RPLNetwork, get_architecture
from rpl_perception.models.espnetv2 import EESP


def test_checkpoint_loads_strictly_into_fact_sheet_network(espnetv2_pth):
    state = torch.load(espnetv2_pth, map_location="cpu", weights_only=True)
    model = ESPNetv2Segmentation()
    assert len(state) == 526
    model.load_state_dict(state, strict=True)  # raises on any missing/unexpected key or shape
    # the model README's 814,351 counts every state-dict number, BN running statistics included
    assert sum(v.numel() for v in model.state_dict().values()) == 814_351
    assert sum(p.numel() for p in model.parameters()) == 789_242


def test_embedded_default_model_is_the_published_checkpoint(espnetv2_pth):
    published = torch.load(espnetv2_pth, map_location="cpu", weights_only=True)
    _, groups = read_checkpoint(DEFAULT_CHECKPOINT)
    assert groups["closed_set"].keys() == published.keys()
    for key, value in published.items():
        assert torch.equal(groups["closed_set"][key], value), key


def test_load_closed_set_returns_frozen_eval_module_with_input_resolution_logits():
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    assert not seg.training
    assert all(not p.requires_grad for p in seg.parameters())
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        logits = seg(x)
    assert logits.shape == (2, 20, 128, 256)


def test_eesp_dilations_follow_the_receptive_field_limit():
    # r_lim 7 caps the 9×9 branch to 3×3: dilations 1,1,2,3 (fact sheet, level4)
    assert [m.conv.dilation[0] for m in EESP(512, 512, r_lim=7).spp_dw] == [1, 1, 2, 3]
    assert [m.conv.dilation[0] for m in EESP(128, 128, r_lim=13).spp_dw] == [1, 2, 3, 4]


def _rpl_network(width):
    arch = get_architecture("espnetv2_cityscapes")
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    return RPLNetwork(seg, arch.build_rpl_branch(seg, width, "pyramid")).eval()


def test_rpl_branch_shapes_and_closed_set_invariance():
    torch.manual_seed(0)
    network = _rpl_network(width=64)
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        out = network(x)
        plain = network.closed_set(x)
    assert out.rpl.shape == out.closed.shape == (1, 20, 128, 256)
    assert out.embedding.shape == (1, 64, 8, 16)  # stride 16 context feature
    # ỹ is the closed-set network's own output, bit for bit, whatever the branch does
    assert torch.equal(out.closed, plain)
    assert not torch.equal(out.rpl, out.closed)


def test_branch_starts_as_copy_of_the_segmenters_context_module_only_when_widths_match():
    net64, net32 = _rpl_network(64), _rpl_network(32)
    src = net64.closed_set.bu_dec_l1.state_dict()
    for key, value in net64.branch.context.state_dict().items():
        assert torch.equal(value, src[key]), key
    assert net32.branch.context.merge_layer[3].out_channels == 32


def test_segmenter_stays_frozen_in_eval_mode_when_training_the_branch():
    network = _rpl_network(64).train()
    assert network.branch.training
    assert not network.closed_set.training
    assert not any(m.training for m in network.closed_set.modules())


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ValueError, match="espnetv2_cityscapes"):
        get_architecture("no_such_net")


def test_separable_aspp_branch_keeps_every_deep_channel():
    """The aspp design reads all 512 level-4 channels (the pyramid copy projects them to 10 first)."""
    torch.manual_seed(0)
    arch = get_architecture("espnetv2_cityscapes")
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    assert arch.rpl_designs == ("aspp", "pyramid", "aspp_fine") and arch.default_rpl_width == 128
    assert arch.design_of_unrecorded == "pyramid"  # files from before designs were recorded
    branch = arch.build_rpl_branch(seg, 128, "aspp")
    context = branch.context
    assert context.project[0].in_channels == 512 and context.project[0].out_channels == 128
    assert [b[0].dilation[0] for b in context.atrous] == [2, 4, 8]
    assert all(b[0].groups == 128 for b in context.atrous)  # depth-wise
    assert context.merge[0].in_channels == 5 * 128  # projection, three atrous, image pooling
    assert sum(p.numel() for p in branch.parameters()) == 221_984
    network = RPLNetwork(seg, branch).eval()
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        out = network(x)
        plain = seg(x)
    assert out.embedding.shape == (2, 128, 8, 16) and out.rpl.shape == (2, 20, 128, 256)
    assert torch.equal(out.closed, plain)
    # the image-pooling branch gives every position of an image the same global context
    with torch.no_grad():
        pooled = context.pool(context.project(seg.extract_deep(x)))
    assert pooled.shape == (2, 128, 1, 1)
    with pytest.raises(ValueError, match="unknown ESPNetv2 RPL branch design 'wide'"):
        arch.build_rpl_branch(seg, 64, "wide")


def test_extract_deep_is_the_deep_feature_of_extract_features():
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        deep, _ = seg.extract_features(x)
        assert torch.equal(seg.extract_deep(x), deep)


def test_fine_branch_reads_the_heads_input_at_its_resolution():
    """aspp_fine: the residual follows the head's input feature pixel by pixel (a stride-16 residual
    cannot), and the closed-set output stays the closed-set network's own."""
    from rpl_perception.models.rpl import FineRPLBranch

    torch.manual_seed(0)
    arch = get_architecture("espnetv2_cityscapes")
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    branch = arch.build_rpl_branch(seg, 64, "aspp_fine").eval()
    assert isinstance(branch, FineRPLBranch) and branch.residual.in_channels == 32
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        deep, feat = seg.extract_features(x)
        embedding = branch.embed(deep)
        residual = branch.residual_from(embedding, feat)
        assert residual.shape == feat.shape == (1, 32, 64, 128)
        poked = feat.clone()
        poked[..., 30, 70] += 5.0
        changed = (branch.residual_from(embedding, poked) - residual).abs().sum(dim=1)[0]
        assert changed[30, 70] > 0 and changed.count_nonzero() == 1  # exactly where the feature changed
        network = RPLNetwork(seg, branch).eval()
        out = network(x)
        assert torch.equal(out.closed, seg(x)) and out.rpl.shape == (1, 20, 128, 256)


@pytest.mark.parametrize("fine_channels", [32, 8])
def test_fine_branch_is_the_fused_concatenation_computed_without_it(fine_channels):
    """The residual equals fuse's 1×1 over the concatenation [upsampled reduced context, feat] (the
    design as written), values and gradients, for trained-looking BatchNorm statistics (eval mode)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    arch = get_architecture("espnetv2_cityscapes")
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    branch = arch.build_rpl_branch(seg, 64, "aspp_fine", fine_channels=fine_channels).eval()
    assert branch.fine_channels == fine_channels == branch.reduce[0].out_channels == branch.residual.in_channels
    with torch.no_grad():
        for norm in (branch.reduce[1], branch.fuse[1]):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.normal_()
            norm.bias.normal_()
    # in double precision: the two orders of summation then agree to ~1e-12, so a tight tolerance
    # separates a wrong formula from rounding
    branch.double()
    embedding = torch.randn(2, 64, 4, 8, dtype=torch.float64)
    feat = torch.randn(2, 32, 32, 64, dtype=torch.float64)

    def concatenated(branch):
        coarse = F.interpolate(branch.reduce(embedding), feat.shape[-2:], mode="bilinear", align_corners=True)
        return branch.residual(branch.fuse(torch.cat([coarse, feat], 1)))

    fast = branch.residual_from(embedding, feat)
    written = concatenated(branch)
    assert fast.shape == feat.shape
    torch.testing.assert_close(fast, written, rtol=1e-9, atol=1e-9)
    assert written.abs().max() > 0.1  # a non-trivial residual was compared
    fast.square().sum().backward()
    fast_grads = [p.grad.clone() for p in branch.parameters() if p.grad is not None]
    branch.zero_grad(set_to_none=True)
    written.square().sum().backward()
    written_grads = [p.grad for p in branch.parameters() if p.grad is not None]
    assert len(fast_grads) == len(written_grads) > 0
    for a, b in zip(fast_grads, written_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fine_channels_belong_to_the_fine_design_only():
    arch = get_architecture("espnetv2_cityscapes")
    seg = load_closed_set(DEFAULT_CHECKPOINT)
    assert arch.build_rpl_branch(seg, 64, "aspp_fine").fine_channels == 32  # the design's default
    narrow = arch.build_rpl_branch(seg, 64, "aspp_fine", fine_channels=16)
    wide = arch.build_rpl_branch(seg, 64, "aspp_fine")
    # reduce 64→F and fuse (F+32)→F (each + BatchNorm), residual F→32: narrower at F = 16 than at 32 by
    assert sum(p.numel() for p in narrow.parameters()) == (
        sum(p.numel() for p in wide.parameters()) - (64 * 16 + 2 * 16) - (64 * 32 - 48 * 16 + 2 * 16) - 32 * 16)
    with pytest.raises(ValueError, match="fine_channels is a setting of the aspp_fine design, not of 'aspp'"):
        arch.build_rpl_branch(seg, 64, "aspp", fine_channels=16)
