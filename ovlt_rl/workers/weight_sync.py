"""Weight sync over NCCL: policy rank 0 broadcasts the full weights to the rollout workers.

The policy ranks and the rollout workers are separate torch.distributed worlds (the policy's
FSDP group, and nothing or vLLM's own on the rollout side), so the sync group is its own
NCCL communicator built from a TCPStore: rank 0 is policy rank 0, ranks 1..R are the rollout
workers. No weights touch the disk or the host.

Both sides walk the HF state dict in the same order (same model class), so they agree on the
buckets without exchanging metadata: consecutive tensors, up to `bucket_bytes` each, flattened in
the rollout dtype. Per bucket, every policy rank joins the FSDP all-gathers of its tensors
(`full_tensor()`), rank 0 packs them and broadcasts one flat buffer; each rollout worker receives
it and copies the slices into its parameters.

On CPU (gloo, tests) the Ray object store carries the weights instead (ovlt_rl/workers/weight_syncer.py).
"""

from __future__ import annotations

import datetime
from typing import Iterator

import torch
import torch.distributed as dist

from ovlt_rl.workers.rendezvous import tcp_store

DEFAULT_BUCKET_BYTES = 512 << 20


def init_sync_group(host: str, port: int, rank: int, world_size: int, device: torch.device):
    """Join the sync communicator (blocks until all `world_size` members have joined)."""
    # Listens on `host` only (torch's own server would listen on every interface).
    store = tcp_store(host, port, world_size, is_master=rank == 0, timeout=datetime.timedelta(minutes=5))
    opts = dist.ProcessGroupNCCL.Options()
    pg = dist.ProcessGroupNCCL(dist.PrefixStore("ovlt-weight-sync", store), rank, world_size, opts)
    # A first collective makes NCCL build the communicator now, not inside the first sync.
    t = torch.ones(1, device=device)
    _broadcast(pg, t)
    torch.cuda.synchronize(device)
    return pg


def _broadcast(pg, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    pg.broadcast([tensor], opts).wait()


def plan_buckets(specs: list[tuple[str, torch.Size]], elem_size: int, bucket_bytes: int) -> list[list[int]]:
    """Group tensor indices into consecutive buckets of at most `bucket_bytes` (a larger tensor goes alone)."""
    buckets: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    for i, (_, shape) in enumerate(specs):
        nbytes = int(torch.Size(shape).numel()) * elem_size
        if cur and cur_bytes + nbytes > bucket_bytes:
            buckets.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nbytes
    if cur:
        buckets.append(cur)
    return buckets


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def send_weights(pg, hf_module: torch.nn.Module, rank: int, dtype: torch.dtype, device: torch.device,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
    """Policy side; every FSDP rank calls this (all-gathers are collectives), rank 0 broadcasts.

    Returns the bytes sent (rank 0) or 0.
    """
    sd = hf_module.state_dict()
    names = list(sd)
    specs = [(n, sd[n].shape) for n in names]
    sent = 0
    for bucket in plan_buckets(specs, torch.tensor([], dtype=dtype).element_size(), bucket_bytes):
        parts = [_full(sd[names[i]]) for i in bucket]
        if rank == 0:
            flat = torch.cat([p.to(device=device, dtype=dtype).reshape(-1) for p in parts])
            _broadcast(pg, flat)
            sent += flat.numel() * flat.element_size()
        del parts
    if rank == 0:
        torch.cuda.synchronize(device)
    return sent


@torch.no_grad()
def receive_weights(pg, model: torch.nn.Module, dtype: torch.dtype, device: torch.device,
                    bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
    """Rollout side: receive every bucket and copy it into `model`'s parameters. Returns bytes received."""
    sd = model.state_dict()
    names = list(sd)
    specs = [(n, sd[n].shape) for n in names]
    got = 0
    for bucket in plan_buckets(specs, torch.tensor([], dtype=dtype).element_size(), bucket_bytes):
        numel = sum(sd[names[i]].numel() for i in bucket)
        flat = torch.empty(numel, dtype=dtype, device=device)
        _broadcast(pg, flat)
        got += flat.numel() * flat.element_size()
        for i, piece in zip(bucket, _split(flat, [sd[names[i]] for i in bucket])):
            sd[names[i]].copy_(piece)
    torch.cuda.synchronize(device)
    return got


def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    offset = 0
    for t in like:
        n = t.numel()
        yield flat[offset : offset + n].view(t.shape)
        offset += n
