"""The rollout worker: a Ray actor holding one rollout engine (hf or vllm) for generation."""

from __future__ import annotations

import os
from typing import Any

import torch

from ovlt_rl.config import Config
from ovlt_rl.engines import make_engine
from ovlt_rl.engines.base import Generation, SamplingParams


class RolloutWorker:
    def __init__(self, cfg: Config, model_path: str, device: str | None = None):
        """`device` ("auto", "cpu" or "cuda"; None: cfg.trainer.device) lets data preparation run
        its engines on prepare.device."""
        torch.set_num_threads(int(os.environ.get("OVLT_TORCH_THREADS", "1")))
        use_cuda = torch.cuda.is_available() and (device or cfg.trainer.device) != "cpu"
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        self.cfg = cfg
        self.engine = make_engine(cfg, model_path, self.device)

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        return self.engine.generate(prompts, params)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> int:
        return self.engine.load_state_dict(state_dict)

    def init_weight_sync(self, host: str, port: int, rank: int, world_size: int) -> None:
        from ovlt_rl.workers.weight_sync import init_sync_group

        if hasattr(self.engine, "init_weight_sync_group"):  # vLLM: its own workers join, from rank `rank` on
            self.engine.init_weight_sync_group(host, port, rank, world_size)
            return
        self.sync_pg = init_sync_group(host, port, rank, world_size, self.device)

    def receive_weights(self) -> int:
        from ovlt_rl.models.dtype import resolve_dtype
        from ovlt_rl.workers.weight_sync import DEFAULT_BUCKET_BYTES, receive_weights

        if hasattr(self.engine, "update_weights_from_nccl"):  # vLLM: the dtype and buckets of the policy's send_weights
            dtype = resolve_dtype(self.cfg.model.dtype, self.device)
            return self.engine.update_weights_from_nccl(str(dtype).removeprefix("torch."), DEFAULT_BUCKET_BYTES)
        model = self.engine.model
        return receive_weights(self.sync_pg, model, next(model.parameters()).dtype, self.device)

    def sleep(self) -> None:
        """Colocated vLLM: give the GPU to the policy (a no-op for other engines and placements)."""
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def can_ipc(self) -> bool:
        """Whether this engine takes the colocated CUDA IPC weight sync (a vLLM sharing the policy's GPU)."""
        return bool(getattr(self.engine, "ipc", False))

    def start_ipc_update(self) -> None:
        self.engine.start_ipc_update()

    def ipc_update(self, chunk: dict[str, Any]) -> int:
        return self.engine.ipc_update(chunk)

    def finish_ipc_update(self) -> None:
        self.engine.finish_ipc_update()

    def compute_logprobs(self, prompts: list[dict[str, Any]], responses: list[list[int]]) -> list[list[float]]:
        return self.engine.compute_logprobs(prompts, responses)

    def ready(self) -> str:
        """The engine this worker built ("hf" or "vllm"): with rollout.engine=auto, what auto chose."""
        return self.engine.NAME
