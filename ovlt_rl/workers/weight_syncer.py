"""How the policy's weights reach the rollout workers: one object that owns both sides.

    weights = WeightSyncer(cfg, policy, rollout, policy_device)   # picks the mode, connects the sides
    weights.push()                                                # after every update (and a resume)

Modes (rollout.weight_sync):
  object_store  policy rank 0 gathers the full state dict on the host; the rollout workers read it
                from Ray's object store (CPU, any engine, GPUs shared between policy and rollout)
  nccl          bucketed broadcast from policy rank 0 over an NCCL group of its own
                (ovlt_rl/workers/weight_sync.py), GPUs of their own on both sides
  ipc           a vLLM engine on the policy's GPU opens the policy's packed weights through CUDA
                IPC and loads them chunk by chunk (ovlt_rl/workers/ipc_sync.py)

A mode is a branch in `__init__` (its set-up, if any) and in `push`, plus its own methods; the
worker-side halves are methods of PolicyWorker and RolloutWorker, called only from here.
"""

from __future__ import annotations

import logging

import ray

from ovlt_rl.config import Config
from ovlt_rl.workers.group import PolicyGroup, RolloutGroup

log = logging.getLogger("ovlt")


def weight_sync_mode(cfg: Config, policy_device: str, engine: str, *, can_ipc: bool) -> str:
    """How the policy's weights reach the rollout workers: "object_store", "nccl" or "ipc" (see rollout.weight_sync).

    `engine` is the one the rollout workers built ("hf" or "vllm"; rollout.engine=auto resolved) and
    `can_ipc` whether they take the CUDA IPC hand-over (a vLLM sharing the policy's GPU, with vLLM's
    weight transfer; RolloutWorker.can_ipc). nccl with the vLLM engine only when asked for
    (rollout.weight_sync=nccl): its receiving side (ovlt_rl/engines/vllm_weights.py) has not run on
    GPUs yet, so "auto" keeps the object store there."""
    r = cfg.rollout
    on_gpu = policy_device.startswith("cuda") and r.gpus_per_worker > 0
    # NCCL refuses two ranks on one device, so a policy and a rollout worker sharing a GPU
    # (fractional gpus_per_worker) go through the object store, or CUDA IPC with vLLM.
    whole_gpus = r.gpus_per_worker >= 1 and cfg.actor.gpus_per_worker >= 1
    if r.weight_sync == "nccl" and not (on_gpu and whole_gpus):
        raise ValueError("rollout.weight_sync=nccl needs the policy and the rollout engine (hf or vllm) on GPUs of their own "
                         "(actor.gpus_per_worker >= 1, rollout.gpus_per_worker >= 1)")
    if r.weight_sync == "ipc" and not (on_gpu and can_ipc):
        raise ValueError("rollout.weight_sync=ipc needs rollout.engine=vllm sharing the policy's GPU (0 < rollout.gpus_per_worker < 1, "
                         "actor.gpus_per_worker < 1, trainer.device not cpu) and a vLLM with weight_transfer_config (0.22 has it)")
    if r.weight_sync == "auto":
        if on_gpu and whole_gpus and engine == "hf":
            return "nccl"
        return "ipc" if on_gpu and can_ipc else "object_store"
    return r.weight_sync


def sync_ranks(cfg: Config, n_rollout_workers: int, engine: str) -> tuple[list[int], int]:
    """NCCL weight-sync ranks: each rollout worker's first rank and the world size. Policy rank 0
    is rank 0; an hf worker takes one rank, a vLLM worker one per tensor-parallel worker."""
    per = cfg.rollout.tensor_parallel_size if engine == "vllm" else 1
    return [1 + i * per for i in range(n_rollout_workers)], 1 + n_rollout_workers * per


class WeightSyncer:
    """Pushes the policy group's weights into the rollout group's engines, in one mode for the run."""

    def __init__(self, cfg: Config, policy: PolicyGroup, rollout: RolloutGroup, policy_device: str):
        self.policy, self.rollout = policy, rollout
        self.dtype = cfg.model.dtype  # the policy casts to it before an NCCL broadcast or an IPC hand-over
        self.mode = weight_sync_mode(cfg, policy_device, rollout.engine, can_ipc=rollout.can_ipc())
        if self.mode == "nccl":
            self._connect_nccl(*sync_ranks(cfg, len(rollout.workers), rollout.engine))
        log.info("weight sync: %s", self.mode)

    def push(self) -> None:
        """The policy's current weights into every rollout worker; returns when all have them."""
        if self.mode == "nccl":
            self._push_nccl()
        elif self.mode == "ipc":
            self._push_ipc()
        else:
            self._push_object_store()

    # -- object store ----------------------------------------------------------------------------

    def _push_object_store(self) -> None:
        refs = [w.full_state_dict.remote() for w in self.policy.workers]  # a collective: every rank
        ray.get([w.load_weights.remote(refs[0]) for w in self.rollout.workers])
        ray.get(refs[1:])

    # -- NCCL ------------------------------------------------------------------------------------

    def _connect_nccl(self, first_ranks: list[int], world: int) -> None:
        # Every member joins at once: each join blocks until the whole group is there.
        host, port = self.policy.free_port()
        ray.get([self.policy.workers[0].init_weight_sync.remote(host, port, world)]
                + [w.init_weight_sync.remote(host, port, first_ranks[i], world) for i, w in enumerate(self.rollout.workers)]
                + [w.init_weight_sync.remote(host, port, world) for w in self.policy.workers[1:]])

    def _push_nccl(self) -> None:
        ray.get([w.send_weights.remote(self.dtype) for w in self.policy.workers]
                + [w.receive_weights.remote() for w in self.rollout.workers])

    # -- CUDA IPC (vLLM on the policy's GPU) -----------------------------------------------------

    def _push_ipc(self) -> None:
        """Each chunk of the weights is packed on the policy's GPU (every rank, in step: the
        all-gathers are collectives) and loaded by vLLM from there; the next chunk is packed only
        after vLLM has read the buffer (ovlt_rl/workers/ipc_sync.py)."""
        from ovlt_rl.workers.ipc_sync import merge_chunks
        from ovlt_rl.workers.weight_sync import DEFAULT_BUCKET_BYTES

        self.rollout.start_ipc_update()
        ray.get([w.ipc_begin.remote(self.dtype, DEFAULT_BUCKET_BYTES) for w in self.policy.workers])
        while (chunk := merge_chunks(ray.get([w.ipc_next.remote() for w in self.policy.workers]))) is not None:
            self.rollout.ipc_update(chunk)
        self.rollout.finish_ipc_update()
