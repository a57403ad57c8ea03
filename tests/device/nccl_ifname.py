#!/usr/bin/env python3
"""Run on a lent machine with two NVIDIA GPUs (the `device` tool, kind nvidia-h200-x2), not in CI.

Checks, on real GPUs and NCCL, the per-node network variables that llmops.vllm.vllm_multinode_plan
renders for a multi-node instance (docs/multinode.md): NCCL_SOCKET_IFNAME=<"=" + interface> and
GLOO_SOCKET_IFNAME=<interface>. Two ranks, one per GPU, stand for two nodes: with NCCL's
peer-to-peer and shared-memory transports off (and InfiniBand off), NCCL must carry the GPU
all-reduce over its socket transport, on the interface the variable names, as it does between hosts.

  python3 tests/device/nccl_ifname.py <interface>          # expect: all-reduce ok over that interface
  python3 tests/device/nccl_ifname.py =<interface>-nonexistent  # expect: NCCL refuses at init

It prints, per rank, the NCCL lines that name the interface and the transport, and the result.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank, world, interface, port, queue):
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        # what the plan renders for a node whose cluster_interface is <interface>
        "NCCL_SOCKET_IFNAME": interface if interface.startswith("=") else "=" + interface,
        "GLOO_SOCKET_IFNAME": interface.lstrip("="),
        # two GPUs of one host standing for two hosts: no NVLink/PCIe peer copies, no shared memory, no IB
        "NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_IB_DISABLE": "1",
        "NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET",
    })
    torch.cuda.set_device(rank)
    try:
        dist.init_process_group("nccl", rank=rank, world_size=world)
        x = torch.full((1 << 20,), float(rank + 1), device="cuda")
        dist.all_reduce(x)
        torch.cuda.synchronize()
        ok = bool(torch.all(x == sum(range(1, world + 1))).item())
        gloo = dist.new_group(backend="gloo")
        y = torch.tensor([rank + 1.0])
        dist.all_reduce(y, group=gloo)
        queue.put((rank, "nccl all-reduce %s, gloo all-reduce %s" % ("ok" if ok else "WRONG", y.item())))
        dist.destroy_process_group()
    except Exception as exc:  # the refusal is the expected result of the negative case
        queue.put((rank, "failed: %s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:300])))


def main():
    interface = sys.argv[1] if len(sys.argv) > 1 else "lo"
    world = 2
    assert torch.cuda.device_count() >= world, "needs two GPUs"
    print("GPUs: %s" % ", ".join(torch.cuda.get_device_name(i) for i in range(world)))
    print("torch %s, NCCL %s" % (torch.__version__, ".".join(map(str, torch.cuda.nccl.version()))))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world, interface, 29511, queue)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    results = {}
    while not queue.empty():
        rank, text = queue.get()
        results[rank] = text
    for rank in range(world):
        print("rank %d: %s" % (rank, results.get(rank, "no result (timed out or crashed)")))


if __name__ == "__main__":
    main()
