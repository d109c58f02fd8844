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

    def ovlt_init_sync_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        from vllm.distributed.parallel_state import get_world_group

        rank = rank_offset + get_world_group().rank
        self.ovlt_sync_group = stateless_nccl_group(master_address, master_port, rank, world_size, self.device)

    def ovlt_receive_weights(self, meta: list[tuple[str, str, list[int]]]) -> int:
        """Receive the tensors of `meta` by NCCL broadcast from policy rank 0, then load them at once.

        Written against vLLM's RL examples; not yet run on a GPU (see vllm_engine's docstring)."""
        weights = []
        for name, dtype, shape in meta:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self.ovlt_sync_group.broadcast(buf, src=0, stream=torch.cuda.current_stream())
            weights.append((name, buf))
        load_into_worker(self, weights)
        return len(meta)

    def ovlt_weights_checksum(self) -> float:
        return float(sum(p.float().sum().item() for p in self.model_runner.model.parameters()))


def stateless_nccl_group(master_address: str, master_port: int, rank: int, world_size: int, device):
    """An NCCL communicator outside torch.distributed's global group (vLLM's StatelessProcessGroup)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    pg = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(pg, device=device)


def trainer_weight_sync_group(master_address: str, master_port: int, world_size: int, device):
    """Policy rank 0's side of the NCCL weight-sync group (rank 0; vLLM workers are 1..world_size-1)."""
    return stateless_nccl_group(master_address, master_port, 0, world_size, device)


def broadcast_weights(group, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Send each tensor (on policy rank 0's GPU) to the vLLM workers, in `weight_meta` order."""
    for _, t in tensors:
        group.broadcast(t, src=0, stream=torch.cuda.current_stream())


def weight_meta(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each tensor: what the receiving side allocates."""
    return [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in tensors]
