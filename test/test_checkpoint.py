"""The single-file checkpoint format and its error messages."""

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rpl_perception import AnomalySegmenter
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_model, read_checkpoint, save_checkpoint
from rpl_perception.models import RPLNetwork, get_architecture


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_CHECKPOINT)


def test_round_trip_with_rpl_branch_and_projector(tmp_path, default_model):
    torch.manual_seed(0)
    network, meta = default_model
    arch = get_architecture(meta.architecture)
    model = RPLNetwork(network.closed_set, arch.build_rpl_branch(network.closed_set, 32, "pyramid"))
    projector = torch.nn.Conv2d(32, 32, 1)
    branch_meta = dataclasses.replace(meta, rpl_width=32, rpl_design="pyramid", score="rpl_energy",
                                      provenance={"data": "unit test", "iterations": 0})
    path = save_checkpoint(tmp_path / "m.safetensors", branch_meta, model, projector)
    loaded, loaded_meta = load_model(path)
    assert loaded_meta.rpl_width == 32 and loaded_meta.provenance["data"] == "unit test"
    for key, value in model.branch.state_dict().items():
        assert torch.equal(loaded.branch.state_dict()[key], value)
    _, groups = read_checkpoint(path)
    assert torch.equal(groups["projector"]["weight"], projector.weight)
    assert AnomalySegmenter.from_checkpoint(path, network_size=(128, 64)).score == "rpl_energy"


def test_files_with_the_earlier_group_name_still_load(tmp_path, default_model):
    """Files written before the closed-set group was named ``closed_set`` (the shipped model among
    them) call it ``segmenter.*``; they load to the same network."""
    network, meta = default_model
    path = save_checkpoint(tmp_path / "new.safetensors", meta, network)
    tensors = load_file(str(path))
    assert {key.split(".")[0] for key in tensors} == {"closed_set", "rpl"}
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    earlier = tmp_path / "earlier.safetensors"
    save_file({("segmenter." + key.removeprefix("closed_set.")) if key.startswith("closed_set.") else key: value
               for key, value in tensors.items()}, str(earlier), metadata=header)
    (_, new_groups), (_, earlier_groups) = read_checkpoint(path), read_checkpoint(earlier)
    assert new_groups["closed_set"].keys() == earlier_groups["closed_set"].keys()
    for group in ("closed_set", "rpl"):
        assert all(torch.equal(value, earlier_groups[group][key]) for key, value in new_groups[group].items())


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        AnomalySegmenter.from_checkpoint(tmp_path / "nope.safetensors")


def test_mismatched_weights_name_file_keys_and_shapes(tmp_path):
    _, groups = read_checkpoint(DEFAULT_CHECKPOINT)
    state = dict(groups["closed_set"])
    del state["bu_dec_l4.merge_layer.3.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["base_net.level1.conv.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    text = str(info.value)
    assert str(path) in text
    assert "missing keys: bu_dec_l4.merge_layer.3.weight" in text
    assert "unexpected keys: extra.weight" in text
    assert "base_net.level1.conv.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3)" in text


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a readable safetensors"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="no 'rpl_perception' metadata"):
        load_model(foreign)
    future = tmp_path / "future.safetensors"
    save_file({"segmenter.w": torch.zeros(2)}, str(future),
              metadata={"rpl_perception": json.dumps({"format": "rpl_perception/99"})})
    with pytest.raises(CheckpointError, match="expected 'rpl_perception/1'"):
        load_model(future)
    pickled = tmp_path / "object.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="object.pth"):
        load_model(pickled)


def test_branch_design_is_recorded_and_rebuilt(tmp_path):
    from rpl_perception.models.rpl import SeparableASPP

    torch.manual_seed(0)
    network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    arch = get_architecture(meta.architecture)
    model = RPLNetwork(network.closed_set, arch.build_rpl_branch(network.closed_set, 32, "aspp"))
    aspp_meta = dataclasses.replace(meta, rpl_width=32, rpl_design="aspp", score="rpl_energy")
    path = save_checkpoint(tmp_path / "aspp.safetensors", aspp_meta, model)
    loaded, loaded_meta = load_model(path)
    assert loaded_meta.rpl_design == "aspp" and isinstance(loaded.branch.context, SeparableASPP)
    for key, value in model.branch.state_dict().items():
        assert torch.equal(loaded.branch.state_dict()[key], value), key
    # files written before designs existed record none: they hold the pyramid
    pyramid = RPLNetwork(network.closed_set, arch.build_rpl_branch(network.closed_set, 32, "pyramid"))
    old = save_checkpoint(tmp_path / "old.safetensors", dataclasses.replace(aspp_meta, rpl_design=None), pyramid)
    assert type(load_model(old)[0].branch.context).__name__ == "EfficientPyrPool"
    # weights of one design under the other's name: the error names the file and the keys
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", dataclasses.replace(aspp_meta, rpl_design="pyramid"), model)
    with pytest.raises(CheckpointError, match=r"wrong\.safetensors: the RPL branch weights do not match"):
        load_model(wrong)
    unknown = save_checkpoint(tmp_path / "unknown.safetensors", dataclasses.replace(aspp_meta, rpl_design="wide"), model)
    with pytest.raises(CheckpointError, match=r"unknown\.safetensors: RPL branch design 'wide' is unknown.*aspp, pyramid, aspp_fine"):
        load_model(unknown)
    # the fine path's width is recorded and rebuilt; on a design without one the error names the file
    fine = RPLNetwork(network.closed_set, arch.build_rpl_branch(network.closed_set, 32, "aspp_fine", fine_channels=8))
    fine_meta = dataclasses.replace(aspp_meta, rpl_design="aspp_fine", rpl_fine_channels=8)
    loaded, loaded_meta = load_model(save_checkpoint(tmp_path / "fine.safetensors", fine_meta, fine))
    assert loaded_meta.rpl_fine_channels == 8 and loaded.branch.fine_channels == 8
    for key, value in fine.branch.state_dict().items():
        assert torch.equal(loaded.branch.state_dict()[key], value), key
    misplaced = save_checkpoint(tmp_path / "misplaced.safetensors", dataclasses.replace(aspp_meta, rpl_fine_channels=8), model)
    with pytest.raises(CheckpointError, match=r"misplaced\.safetensors: its RPL branch metadata cannot be built "
                                              r"\(fine_channels is a setting of the aspp_fine design, not of 'aspp'\)"):
        load_model(misplaced)
