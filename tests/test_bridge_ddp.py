"""fastrnn_torch under DistributedDataParallel (gloo, two processes on 127.0.0.1)."""

import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastrnn_torch as frt


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, 3, generator=g, dtype=torch.float64), torch.randn(
        4, 5, generator=g, dtype=torch.float64
    )


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120)
    )
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        frt.LSTM(3, 5, num_layers=2, bidirectional=False).double()
    )
    x, target = _data()
    shard = slice(2 * rank, 2 * rank + 2)
    y, _ = model(x[:, shard])
    ((y[-1] - target[shard]) ** 2).mean().backward()
    if rank == 0:
        torch.save(
            {n: p.grad for n, p in model.module.named_parameters()},
            os.path.join(out_dir, "grads.pt"),
        )
    dist.barrier()
    # Leave without running torch's gloo teardown: destroying the process group while
    # the DDP reducer is freed can deadlock (the main thread joins gloo's worker thread
    # while holding the GIL that thread needs), which hung a CI run.
    os._exit(0)


def test_ddp_gloo_two_processes(tmp_path):
    context = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240  # never let a stuck collective hang the suite
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("DDP workers did not finish within 240 s")
    grads = torch.load(tmp_path / "grads.pt")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=2).double()
    x, target = _data()
    y, _ = ref(x)
    # DDP averages the two shards' gradients: the mean of the per-shard mean losses.
    ((y[-1] - target) ** 2).mean().backward()
    for name, p in ref.named_parameters():
        assert (grads[name] - p.grad).abs().max() < 1e-12, name
