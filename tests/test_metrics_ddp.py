"""Metric states synchronise across two real CPU processes (gloo), as under DDP."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CROSS = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # without it gloo aborts on hosts whose name resolves oddly
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    from diffice.metrics import Efficiency, FrechetDistance, Validity

    cross = torch.tensor(CROSS)
    fake = torch.tensor([3.0, 4.0]) + 2 * cross
    fd, val, eff = FrechetDistance(), Validity(), Efficiency()
    # uneven shares: rank 0 has 3 inputs / 1 counterfactual, rank 1 the rest
    sl = slice(0, 3) if rank == 0 else slice(3, 4)
    fd.update(cross[sl], fake[slice(0, 1) if rank == 0 else slice(1, 4)])
    p_in, p_cf = ([0.2, 0.4], [0.9, 0.3]) if rank == 0 else ([0.7, 0.1], [0.8, 0.5])
    val.update(p_in, p_cf)
    eff.update(2.0 if rank == 0 else 4.0, frames=1, nfe=10, peak_bytes=1e9 * (rank + 1))
    result = {"fd": float(fd.compute()), "mad": float(val.compute()["mad"]),
              "peak": float(eff.compute()["peak_memory_gb"]), "mean": float(eff.compute()["batch_seconds_mean"])}
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_metrics_sync_across_two_processes(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    out = str(tmp_path / "result.pt")
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="fork")
    r = torch.load(out)
    assert r["fd"] == pytest.approx(25 + 4 / 3, rel=1e-12)  # same as one process seeing all samples
    assert r["mad"] == pytest.approx(0.4)
    assert r["peak"] == pytest.approx(2.0) and r["mean"] == pytest.approx(3.0)
