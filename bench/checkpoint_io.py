"""Checkpoint I/O benchmark: seconds to save, verify (sha256 of every file) and load the sharded
training state (fp32 parameters + AdamW moments) through ovlt's checkpoint path, on one rank.

    python bench/checkpoint_io.py [--params-b 3.0] [--out /tmp/ckpt-bench]

The state is `--params-b` billion fp32 parameters in square Linear layers under FSDP2 (one rank,
nccl on a GPU, gloo on CPU), after one AdamW step: 12 bytes per parameter on disk, e.g. 36 GB for
3B. A 7B run (bf16 weights 15 GB + fp32 optimizer state 90 GB = 105 GB) scales from its rates.
Nothing is recorded in results.jsonl: it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ovlt_rl.checkpoint import CheckpointManager  # noqa: E402
from ovlt_rl.workers.sharded_state import load_state, save_state  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params-b", type=float, default=3.0)
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--out", default="/tmp/ckpt-bench")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1, device_id=device if cuda else None)
    from torch.distributed.fsdp import fully_shard

    n_layers = max(1, round(args.params_b * 1e9 / args.width**2))
    model = nn.Sequential(*[nn.Linear(args.width, args.width, bias=False, device=device) for _ in range(n_layers)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    opt.zero_grad(set_to_none=True)

    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    manager = CheckpointManager(root)

    def write(d: str) -> None:
        save_state(d, model, opt, 0, 1, {"opt_steps": 1})

    t0 = time.perf_counter()
    path = manager.save(1, write, {"step": 1})
    save_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in path.iterdir())
    t0 = time.perf_counter()
    ok, why = CheckpointManager.is_valid(path)
    verify_s = time.perf_counter() - t0
    assert ok, why
    t0 = time.perf_counter()
    load_state(str(path), model, opt, 1)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    files = len(list(path.glob("*.safetensors")))
    print(json.dumps({"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                      "params_b": n_layers * args.width**2 / 1e9, "bytes": size, "files": files,
                      "save_s": round(save_s, 2), "verify_s": round(verify_s, 2), "load_s": round(load_s, 2),
                      "save_gbps": round(size / save_s / 1e9, 2), "verify_gbps": round(size / verify_s / 1e9, 2),
                      "load_gbps": round(size / load_s / 1e9, 2), "cpus": os.cpu_count()}))
    shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
