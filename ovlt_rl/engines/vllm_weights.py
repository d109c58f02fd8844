"""The vLLM side of weight sync: buckets as safetensors bytes, staged in vLLM's workers, loaded once.

The driver side (`VLLMEngine.load_state_dict`) packs HF-named tensors into buckets and sends each
with `llm.collective_rpc("ovlt_stage_weights", args=(blob,))`; after the last bucket,
`ovlt_commit_weights` loads everything in one call. Why this shape:

- Bytes, not tensors: vLLM's engine process receives RPC arguments through its own msgpack
  serialiser, which turned CPU tensors into plain lists (or dropped their data). A bucket is one
  `safetensors.torch.save` blob: no pickle, and the worker gets the exact dtype and shape back.
- Tied weights (the tiny model's `lm_head.weight` is `embed_tokens.weight`) share storage, and
  safetensors refuses shared tensors: the second name gets its own copy (`pack_bucket`).
- Staged, then one load: on CPU vLLM repacks its linear layers after loading (the parameters lose
  `weight_loader`), so `model.load_weights` fails on a live engine; the worker's own
  `reload_weights(weights_iterator=..., is_checkpoint_format=True)` restores the loadable layout,
  loads and repacks. It must see every piece of a fused layer (`qkv_proj` from q/k/v,
  `gate_up_proj` from gate/up) in the same call, and buckets split layers anywhere, so all
  buckets are staged (host memory: one copy of the weights in each vLLM worker) before one reload.
  vLLM builds without that `reload_weights` (feature-detected by its `weights_iterator`
  argument) get `model.load_weights`, which loads fused shards independently.

Colocated on a GPU (policy and vLLM share it) the weights do not leave the GPU: `ovlt_ipc_update`
receives a chunk's CUDA IPC handle as plain values (cuda_ipc.py) and passes it to vLLM's own IPC
weight transfer, inside the worker's `start_weight_update` / `finish_weight_update` (vLLM's
layer-wise reload, which joins fused layers across chunks).

`OvltWorkerExtension` is mixed into every vLLM worker (`worker_extension_cls`); its methods run
there. Names carry an `ovlt_` prefix: vLLM refuses extension attributes that clash with the worker's.
"""

from __future__ import annotations

import inspect
from typing import Iterable, Iterator

import torch

BUCKET_BYTES = 512 << 20


def buckets(tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of at most `max_bytes` (a bigger tensor goes alone)."""
    bucket, size = [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def pack_bucket(bucket: list[tuple[str, torch.Tensor]], seen_storages: set[int] | None = None) -> bytes:
    """A bucket as safetensors bytes. A tensor whose storage was already packed (in this bucket or,
    through `seen_storages`, an earlier one: tied weights) is copied, as safetensors requires."""
    from safetensors.torch import save

    seen = seen_storages if seen_storages is not None else set()
    out: dict[str, torch.Tensor] = {}
    for name, t in bucket:
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t.contiguous()
    return save(out)


def unpack_bucket(blob: bytes) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load

    return list(load(blob).items())


def load_into_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> str:
    """Load HF-named tensors into a vLLM worker's model; returns the path taken.

    The model runner's `reload_weights` differs between releases (0.32: `weights_iterator`,
    `weights_path`, `is_checkpoint_format`; some earlier ones `weights_iterator`,
    `process_weights_after_loading`; older still no arguments), so its signature decides."""
    reload = getattr(worker.model_runner, "reload_weights", None)
    params = inspect.signature(reload).parameters if reload is not None else {}
    if "weights_iterator" in params:
        from vllm.config import set_current_vllm_config

        kwargs: dict = {"weights_iterator": iter(weights)}
        if "is_checkpoint_format" in params:
            kwargs["is_checkpoint_format"] = True  # HF names, unfused: vLLM maps and fuses them
        # The layers' re-processing after loading reads vLLM's current config (the worker's own
        # reload_weights sets it the same way in 0.32).
        with set_current_vllm_config(worker.vllm_config):
            reload(**kwargs)
        path = "reload_weights"
    else:
        model = worker.model_runner.model
        model.load_weights(weights=[(n, t.to(worker.device, non_blocking=True)) for n, t in weights])
        path = "load_weights"
    if worker.device.type == "cuda":
        torch.cuda.synchronize(worker.device)
    return path


class OvltWorkerExtension:
    """Methods that run inside every vLLM worker through `llm.collective_rpc(name, args=...)`.

    `self.device`, `self.model_runner` and `self.reload_weights` are the worker's own.
    """

    def ovlt_stage_weights(self, blob: bytes) -> int:
        """Keep one bucket until `ovlt_commit_weights`; returns its tensor count."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(f"ovlt_stage_weights: expected safetensors bytes, got {type(blob).__name__}")
        staged = self.__dict__.setdefault("_ovlt_staged", [])
        tensors = unpack_bucket(bytes(blob))
        staged.extend(tensors)
        return len(tensors)

    def ovlt_commit_weights(self) -> tuple[int, str]:
        """Load every staged tensor at once; returns (how many, which loader)."""
        staged = self.__dict__.pop("_ovlt_staged", [])
        if not staged:
            raise RuntimeError("ovlt_commit_weights: no weights were staged")
        return len(staged), load_into_worker(self, staged)

    def ovlt_discard_staged(self) -> int:
        """Drop staged buckets (after a failed sync) so the next sync starts clean."""
        return len(self.__dict__.pop("_ovlt_staged", []))

    def ovlt_init_sync_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        """Join policy rank 0's NCCL sync group (ovlt_rl.workers.weight_sync) as rank
        `rank_offset` + this worker's rank in vLLM's world (tensor-parallel workers each join)."""
        from vllm.distributed.parallel_state import get_world_group

        from ovlt_rl.workers.weight_sync import init_sync_group

        rank = rank_offset + get_world_group().rank
        self.ovlt_sync_group = init_sync_group(host, port, rank, world_size, self.device)
        return rank

    def ovlt_receive_weights(self, dtype_name: str, bucket_bytes: int) -> int:
        """Receive policy rank 0's `weight_sync.send_weights` broadcast and load it at once.

        Both sides walk the HF model's state dict in the same order and cut the same buckets
        (`plan_buckets`), so only the flat buffers travel. The HF names and shapes come from the
        model folder's config on the meta device (no memory). The received tensors are staged on
        this GPU (one more copy of the weights) until the single `reload_weights`."""
        from ovlt_rl.workers.weight_sync import _broadcast, _split, plan_buckets

        specs = self.__dict__.get("_ovlt_specs")
        if specs is None:
            specs = self._ovlt_specs = hf_weight_specs(self.vllm_config.model_config.model)
        dtype = getattr(torch, dtype_name)
        staged = []
        for bucket in plan_buckets(specs, torch.tensor([], dtype=dtype).element_size(), bucket_bytes):
            shapes = [torch.empty(specs[i][1], device="meta") for i in bucket]
            flat = torch.empty(sum(t.numel() for t in shapes), dtype=dtype, device=self.device)
            _broadcast(self.ovlt_sync_group, flat)
            staged += [(specs[i][0], piece) for i, piece in zip(bucket, _split(flat, shapes))]
        load_into_worker(self, staged)
        return len(staged)


    def ovlt_ipc_update(self, chunk: dict) -> int:
        """Load one chunk of the colocated policy's weights from its CUDA IPC buffer (same GPU).

        `chunk` (ovlt_rl.workers.ipc_sync) names the tensors packed in the buffer and carries the
        buffer's handle per physical GPU as plain values (engines/cuda_ipc.py). vLLM's own IPC
        receiver opens it, copies the tensors out and loads them layer by layer; the caller wraps
        the chunks in `start_weight_update` / `finish_weight_update`, so fused layers may span chunks."""
        from ovlt_rl.engines.cuda_ipc import rebuild_args

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        handles = {uuid: rebuild_args(described, index) for uuid, described in chunk["handles"].items()}
        self.update_weights({"names": chunk["names"], "dtype_names": chunk["dtype_names"], "shapes": chunk["shapes"],
                             "tensor_sizes": chunk["tensor_sizes"], "packed": True, "ipc_handles": handles})
        return len(chunk["names"])


def hf_weight_specs(model_path: str) -> list[tuple[str, torch.Size]]:
    """(name, shape) of the HF Qwen2.5-VL model's state dict, in its order: what the policy's
    `send_weights` walks (the same class, built on the meta device)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(model_path))
    return [(n, t.shape) for n, t in model.state_dict().items()]
