"""FSDP2 (`fully_shard`) on 2 CPU processes (gloo): param_groups built after sharding hold the
sharded parameters and train exactly what the unsharded muP model trains; built before, they
hold the replaced tensors and train nothing (the trap the README warns about)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gpt_sdpa
import muprewrite

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
WORLD, BASE, TARGET, LR = 2, 32, 128, 1e-2


def rewritten():
    torch.manual_seed(0)
    return muprewrite.mupify(gpt_sdpa.make_model, base=BASE, target=TARGET, example_inputs=gpt_sdpa.example_inputs(),
                             verify_width=False)


def one_step(model, groups):
    optimizer = torch.optim.AdamW(groups)
    model(*gpt_sdpa.example_inputs()).float().pow(2).mean().backward()
    optimizer.step()


def _sharded_run(rank: int, port: int, out_dir: str, groups_first: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = rewritten()
        model, mesh = result.model, init_device_mesh("cpu", (WORLD,))
        early = muprewrite.param_groups(model, result.plan, lr=LR) if groups_first else None
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        groups = early or muprewrite.param_groups(model, result.plan, lr=LR)
        held = {id(p) for g in groups for p in g["params"]}
        one_step(model, groups)
        state = {name: p.full_tensor() for name, p in model.named_parameters()}
        if rank == 0:
            torch.save({"state": state, "holds_model_params": held == {id(p) for p in model.parameters()},
                        "lrs": {n: g["lr"] for g in groups for n in g["names"]}}, os.path.join(out_dir, "rank0.pt"))
    finally:
        dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort at exit, under load)
        dist.destroy_process_group()


def sharded(tmp_path, groups_first: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_run, args=(port, str(tmp_path), groups_first), nprocs=WORLD)
    return torch.load(tmp_path / "rank0.pt")


def test_groups_after_fully_shard_train_what_the_unsharded_model_trains(tmp_path):
    got = sharded(tmp_path, groups_first=False)
    result = rewritten()
    groups = muprewrite.param_groups(result.model, result.plan, lr=LR)
    one_step(result.model, groups)
    assert got["holds_model_params"]
    assert got["lrs"] == {n: g["lr"] for g in groups for n in g["names"]}
    assert len(set(got["lrs"].values())) > 1  # hidden matrices get LR / m, the rest LR
    for name, param in result.model.named_parameters():
        torch.testing.assert_close(got["state"][name], param.detach(), rtol=1e-5, atol=1e-6)


def test_groups_built_before_fully_shard_train_nothing(tmp_path):
    got = sharded(tmp_path, groups_first=True)
    initial = rewritten().model
    assert not got["holds_model_params"]
    for name, param in initial.named_parameters():
        torch.testing.assert_close(got["state"][name], param.detach(), rtol=0, atol=0)
