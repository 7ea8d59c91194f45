"""``rpl-perception convert-checkpoint``: turn another code base's model file into ours, or back."""

from pathlib import Path

FROM_CHOICES = ("auto", "official-rpl", "nvidia-wrn38", "state-dict")
TO_CHOICES = ("rpl-perception", "official-rpl")


def register(subparsers):
    p = subparsers.add_parser(
        "convert-checkpoint", help="convert official RPL / NVIDIA / plain PyTorch model files",
        description="Reads IN (PyTorch file, loaded with weights_only=True, or an rpl_perception "
                    ".safetensors), loads it strictly into the network, and writes OUT as an "
                    "rpl_perception .safetensors file (default) or as an official RPL checkpoint "
                    "({'model': state_dict}, what github.com/yyliu01/RPL's test.py loads).")
    p.add_argument("input", type=Path, metavar="IN", help="model file to convert")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="file to write")
    p.add_argument("--from", dest="source_format", choices=FROM_CHOICES, default="auto",
                   help="format of IN (default: detected from its keys; .safetensors files are ours)")
    p.add_argument("--to", dest="target_format", choices=TO_CHOICES, default="rpl-perception",
                   help="format of OUT")
    p.add_argument("--arch", default=None,
                   help="architecture of a 'state-dict' file, e.g. deeplabv3plus_resnet101_os16_cityscapes")
    p.add_argument("--init-rpl", action="store_true",
                   help="add an untrained RPL branch (and CoroCL projector) initialised from the "
                        "closed-set network's ASPP, as the official trainer does: a training start")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh layers of --init-rpl")
    p.set_defaults(func=run)


def coro_cl_projector(network):
    """The CoroCL projector as rpl_training builds it: a 1×1 (with bias) from the branch's
    embedding to the head's input width, Kaiming-normal fan-in, zero bias (the official proj_head)."""
    from torch import nn

    from ..models.rpl import init_kaiming_fan_in

    if not network.has_branch:
        raise ValueError("a CoroCL projector needs an RPL branch, and this model has none")
    projector = nn.Conv2d(network.branch.context_channels, network.closed_set.head_channels, 1, bias=True)
    init_kaiming_fan_in(projector)
    return projector


def run(args) -> int:
    import torch

    from ..checkpoint import build_model, load_state_dict_strict, read_checkpoint, save_checkpoint
    from ..checkpoint.pytorch_files import WRN38_ARCHITECTURE, read_pytorch_checkpoint, save_official_rpl
    from ..models import RPLNetwork, get_architecture

    if not args.input.is_file():
        raise FileNotFoundError(f"model file not found: {args.input}")
    if args.source_format == "auto" or args.input.suffix == ".safetensors":
        meta, groups = read_checkpoint(args.input, args.arch)
    else:
        meta, groups = read_pytorch_checkpoint(args.input, args.arch, args.source_format)
    arch = get_architecture(meta.architecture)
    network = build_model(meta, groups, args.input)
    projector = None
    if groups["projector"]:
        projector = coro_cl_projector(network)
        load_state_dict_strict(projector, groups["projector"], args.input, "projector")

    if args.init_rpl:
        if network.has_branch:
            raise ValueError(f"{args.input}: already holds RPL weights; --init-rpl is for files of a closed-set network alone")
        torch.manual_seed(args.seed)
        branch = arch.build_rpl_branch(network.closed_set, arch.default_rpl_width, arch.rpl_designs[0])
        network = RPLNetwork(network.closed_set, branch).eval()
        projector = coro_cl_projector(network)
        meta.rpl_width = arch.default_rpl_width
        meta.score = "energy"  # an untrained branch must not be the default score
        meta.provenance["rpl"] = (f"untrained: initialised from the closed-set network's ASPP, fresh 1×1s "
                                  f"(seed {args.seed})")

    if args.target_format == "official-rpl":
        if meta.architecture != WRN38_ARCHITECTURE or not network.has_branch:
            raise ValueError(f"official RPL checkpoints hold a {WRN38_ARCHITECTURE} with an RPL branch; "
                             f"{args.input} holds {meta.architecture} "
                             f"{'with' if network.has_branch else 'without'} one")
        save_official_rpl(args.out, {
            "closed_set": network.closed_set.state_dict(), "rpl": network.branch.state_dict(),
            "projector": projector.state_dict() if projector is not None else {}})
    else:
        save_checkpoint(args.out, meta, network, projector)
    print(f"wrote {args.out} ({args.target_format}): {meta.architecture}, "
          f"RPL branch: {'yes' if network.has_branch else 'no'}, "
          f"projector: {'yes' if projector is not None else 'no'}")
    return 0
