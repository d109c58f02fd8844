"""A CUDA buffer shared between processes on one GPU, described in plain values.

The colocated weight sync (policy and vLLM on the same GPU) hands vLLM a CUDA IPC handle to a
buffer in the policy's memory instead of the weights themselves. torch describes such a handle as
the arguments of `torch.multiprocessing.reductions.rebuild_cuda_tensor`, a tuple that holds classes
(`torch.Tensor`, the storage class) and a `torch.dtype`. vLLM's engine RPC (msgpack) refuses those
unless VLLM_ALLOW_INSECURE_SERIALIZATION turns on pickle for everything it receives, so the handle
travels as bytes and ints (`describe`) and becomes the tuple again on the receiving side
(`rebuild_args`), for flat uint8 buffers only: nothing else is accepted or rebuilt.
"""

from __future__ import annotations

from typing import Any

import torch

FIELDS = ("numel", "storage_handle", "storage_size_bytes", "storage_offset_bytes", "ref_counter_handle",
          "ref_counter_offset", "event_handle", "event_sync_required")


def describe(args: tuple) -> dict[str, Any]:
    """`reduce_tensor`'s arguments for a flat, contiguous uint8 CUDA tensor that starts its storage,
    as plain values. Whoever shared the tensor keeps it alive until every receiver has read it."""
    (cls, size, stride, offset, _storage_cls, dtype, _device, handle, size_bytes, offset_bytes,
     _grad, ref_handle, ref_offset, event_handle, event_sync) = args
    if cls is not torch.Tensor or dtype != torch.uint8 or len(size) != 1 or tuple(stride) != (1,) or offset:
        raise ValueError(f"cuda_ipc.describe: expects a 1-D uint8 tensor at the start of its storage, got {cls.__name__} "
                         f"{dtype} {tuple(size)} stride {tuple(stride)} offset {offset}")
    return {"numel": int(size[0]), "storage_handle": bytes(handle), "storage_size_bytes": int(size_bytes),
            "storage_offset_bytes": int(offset_bytes), "ref_counter_handle": bytes(ref_handle),
            "ref_counter_offset": int(ref_offset), "event_handle": None if event_handle is None else bytes(event_handle),
            "event_sync_required": bool(event_sync)}


def rebuild_args(described: dict[str, Any], device_index: int) -> tuple:
    """`describe`'s values as `rebuild_cuda_tensor`'s arguments, opened on `device_index` (the
    receiver's index of the same physical GPU)."""
    if set(described) != set(FIELDS):
        raise ValueError(f"cuda_ipc: a handle has the fields {sorted(described)}, expected {sorted(FIELDS)}")
    d = described
    if not isinstance(d["storage_handle"], (bytes, bytearray)) or not isinstance(d["numel"], int) or d["numel"] <= 0:
        raise ValueError("cuda_ipc: malformed handle (storage_handle must be bytes and numel a positive int)")
    return (torch.Tensor, torch.Size([d["numel"]]), (1,), 0, torch.storage.TypedStorage, torch.uint8, device_index,
            bytes(d["storage_handle"]), int(d["storage_size_bytes"]), int(d["storage_offset_bytes"]), False,
            bytes(d["ref_counter_handle"]), int(d["ref_counter_offset"]), None if d["event_handle"] is None else bytes(d["event_handle"]),
            bool(d["event_sync_required"]))


def gpu_uuid(device: torch.device) -> str:
    """The physical GPU's UUID: how vLLM's IPC receiver finds the handle for its own GPU."""
    return str(torch.cuda.get_device_properties(device).uuid)
