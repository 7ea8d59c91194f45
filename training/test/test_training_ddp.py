"""DDP: two CPU processes on the gloo backend, set up as torchrun does (environment variables)."""

import copy
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from rpl_perception import AnomalySegmenter
from rpl_training.train import STATE_FILE, RPLTrainingModel, build_network, forward_losses, train
from rpl_training_testdata import CROP_HW, small_config

WORLD_SIZE = 2


def _free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    h, w = CROP_HW
    label = torch.zeros(2, h, w, dtype=torch.uint8)
    label[:, 10:30, 20 + 10 * seed:60 + 10 * seed] = 254
    context_label = torch.zeros(2, h, w, dtype=torch.uint8)
    context_label[:, 20:50, 40:90] = 254
    return {"image": torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=g), "label": label,
            "context": torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=g),
            "context_label": context_label}


def _worker(rank: int, ports, cfg, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    result = train(cfg)  # joins and leaves the process group itself

    # Gradient averaging: DDP's gradients = mean over the processes of each one's own gradients.
    # A new group on another port: the first one's store may still be closing in the other process.
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank,
                                         world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        network, projector, meta = build_network(cfg["model"])
        model = RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier).train()
        alone = copy.deepcopy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        batch = _batch(rank)  # a different batch in each process
        for module in (ddp, alone):
            loss, _ = forward_losses(module, batch, use_corocl=True, train_cfg=cfg["train"],
                                     generator=torch.Generator().manual_seed(5))
            loss.backward()
        own = {n: p.grad.clone() for n, p in alone.named_parameters() if p.requires_grad}
        gathered = [None] * WORLD_SIZE
        torch.distributed.all_gather_object(gathered, own)
        torch.save({"iteration": result.iteration, "interrupted": result.interrupted,
                    "ddp": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
                    "own": gathered}, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_on_two_cpu_processes(tiny_data, tmp_path):
    cfg = small_config(tiny_data, tmp_path / "run", "train.batch_size=4", "train.iterations=2",
                       "train.log_every=1", "train.checkpoint_every=1")
    mp.spawn(_worker, args=(_free_ports(2), cfg, str(tmp_path)), nprocs=WORLD_SIZE, join=True)

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert all(r["iteration"] == 2 and not r["interrupted"] for r in results)
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and state["iteration"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["corocl"], state["rng"][1]["corocl"])  # one CoroCL stream per process
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        rows = fh.read().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[8] == "1.0"  # header + 2 iterations, CoroCL ran in both
    assert AnomalySegmenter.from_checkpoint(tmp_path / "run" / "last.safetensors").score == "rpl_energy"

    names = sorted(results[0]["ddp"])
    assert any(n.startswith("projector.") for n in names) and any(n.startswith("network.branch.") for n in names)
    for name in names:
        own = [results[0]["own"][r][name] for r in range(WORLD_SIZE)]
        mean = (own[0] + own[1]) / 2
        for r in range(WORLD_SIZE):
            torch.testing.assert_close(results[r]["ddp"][name], mean, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(results[0]["own"][0][n], results[0]["own"][1][n]) for n in names)
