"""Policy side of the colocated weight sync: the full weights, chunk by chunk, in one GPU buffer
that vLLM (on the same GPU, asleep during the update) opens through CUDA IPC.

    chunks = weight_chunks(hf_module, torch.bfloat16, device, bucket_bytes)   # every FSDP rank
    for chunk in chunks:          # the driver merges the ranks' chunks (their handles, per GPU)
        rollout.ipc_update(chunk) # and resumes the generators only after vLLM has read the buffer

Packing is vLLM's own `packed_ipc_producer` (its receiver, `packed_ipc_consumer`, reads exactly
that layout): one buffer of `bucket_bytes` (or the largest tensor, if larger) is shared once and
refilled per chunk, so the sync needs one buffer of GPU memory, not a copy of the model. The handle
travels as plain values (engines/cuda_ipc.py). Every rank all-gathers each tensor (`full_tensor()`,
a collective) and packs it on its own GPU, so a vLLM worker on any of the policy's GPUs finds a
buffer on its own device; with one GPU that is policy rank 0 alone.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ovlt_rl.engines.cuda_ipc import describe, gpu_uuid


def weight_chunks(hf_module: torch.nn.Module, dtype: torch.dtype, device: torch.device,
                  bucket_bytes: int) -> Iterator[dict[str, Any]]:
    """Chunks of `hf_module`'s full state dict (HF names) cast to `dtype`, each described by
    names, shapes, dtype names, byte sizes and {gpu uuid: buffer handle}. Resume the generator only
    after the receiver has loaded the previous chunk: the buffer is reused."""
    from vllm.distributed.weight_transfer.packed_tensor import packed_ipc_producer

    sd = hf_module.state_dict()
    elem = torch.tensor([], dtype=dtype).element_size()
    buffer_bytes = max(bucket_bytes, max(t.numel() * elem for t in sd.values()))
    uuid = gpu_uuid(device)

    def full_tensors():
        for name, t in sd.items():
            full = t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2: all-gather (every rank)
            yield name, full.detach().to(device=device, dtype=dtype)

    for chunk in packed_ipc_producer(full_tensors(), uuid, post_iter_func=lambda item: item[1],
                                     buffer_size_bytes=buffer_bytes):
        yield {"names": chunk.names, "shapes": chunk.shapes, "dtype_names": chunk.dtype_names,
               "tensor_sizes": chunk.tensor_sizes, "handles": {u: describe(a) for u, a in chunk.ipc_handle.items()}}
    torch.cuda.synchronize(device)
    torch.cuda.ipc_collect()  # release the buffer's IPC bookkeeping once the receiver has let go
    # The policy's cached-but-free blocks (the update's activations, this buffer) go back to the
    # device: vLLM, waking up next on this GPU, allocates its KV cache outside torch's cache.
    torch.cuda.empty_cache()


def merge_chunks(chunks: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The policy ranks' chunks for one step as one: the same tensors, every rank's GPU handle.
    None when the ranks have all finished; ranks out of step are an error."""
    if all(c is None for c in chunks):
        return None
    if any(c is None for c in chunks) or any(c["names"] != chunks[0]["names"] for c in chunks):
        raise RuntimeError("colocated weight sync: the policy ranks produced different chunks")
    merged = dict(chunks[0])
    merged["handles"] = {u: h for c in chunks for u, h in c["handles"].items()}
    return merged
