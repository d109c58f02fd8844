"""Worker groups on Ray: a placement group per role, actors placed into its bundles.

    init_ray(cfg)                         local Ray on 127.0.0.1, or join a cluster
    policy = PolicyGroup(cfg, model_path) FSDP2 ranks (one torch.distributed group)
    rollout = RolloutGroup(cfg, model_path)

The driver calls the groups' methods (`policy.update_policy(samples, denominator=..., temperature=...)`),
each a plain Ray call of the workers' method of the same name with keyword arguments: no dispatch
decorators, so what runs where is visible here. A policy method that runs the model deals its
samples to the ranks round-robin (`split_for_ranks`) and puts the results back in sample order.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ovlt_rl.config import Config
from ovlt_rl.engines.base import Generation, SamplingParams
from ovlt_rl.workers.placement import place

log = logging.getLogger(__name__)

# Environment every actor gets: one intra-op thread (2 processes with 2 threads each on 2 cores
# ran 3-4x slower than with 1), no tokenizer fork warnings, no usage reporting.
_ACTOR_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}


from ovlt_rl.loopback import LOOPBACK_ENV

_local = False


def is_local() -> bool:
    """True when this driver started its own Ray on loopback (no cluster address)."""
    return _local


def init_ray(cfg: Config, num_cpus_needed: int) -> None:
    """Start or join Ray. Local runs stay on loopback (127.0.0.1) and report nothing outside."""
    global _local
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {**_ACTOR_ENV}
    for key in ("OVLT_CACHE", "PYTHONPATH", "HF_HUB_OFFLINE", "OVLT_TORCH_THREADS"):
        if key in os.environ:
            env[key] = os.environ[key]
    address = cfg.trainer.ray_address or os.environ.get("RAY_ADDRESS", "")
    if cfg.trainer.network_interface:  # every actor's gloo and NCCL (ovlt_rl/workers/network.py)
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = cfg.trainer.network_interface
    if address:
        # In a `ray job submit` job the job's runtime env already sets these; repeating them conflicts.
        env = {k: v for k, v in env.items() if k not in os.environ}
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    _local = True
    from ovlt_rl import loopback

    loopback.apply([])  # inherited by the Ray processes this driver starts
    env.update({k: os.environ[k] for k in LOOPBACK_ENV if k in os.environ})
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported; `ovlt` sets it before
    # that, but a program that imported ray first still has the old value: correct it here.
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    runtime_env = {"env_vars": env}
    num_cpus = cfg.trainer.ray_num_cpus or max(os.cpu_count() or 1, num_cpus_needed)
    ray.init(
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=False,
    )
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":
        raise RuntimeError(f"local Ray came up on {node_ip}, not on loopback (127.0.0.1)")


@ray.remote(num_cpus=0)
def _address_and_port(local: bool) -> tuple[str, int]:
    """The node address of this bundle and a free TCP port on it (for the torch.distributed rendezvous,
    whose store listens on that address only: ovlt_rl/workers/rendezvous.py)."""
    from ovlt_rl.workers.rendezvous import free_port

    addr = "127.0.0.1" if local else ray.util.get_node_ip_address()
    return addr, free_port(addr)


class PolicyGroup:
    """`actor.num_workers` PolicyWorker actors forming one torch.distributed group."""

    def __init__(self, cfg: Config, model_path: str):
        from ovlt_rl.workers.policy import PolicyWorker, worker_settings

        n, gpus = cfg.actor.num_workers, cfg.actor.gpus_per_worker
        # One node if one can hold the group, else over as few as fit; ranks numbered node by node.
        self.layout = place(n, gpus, dict(cfg.actor.resources_per_worker), "ovlt-policy")
        self.pg = self.layout.pg
        addr, port = self.free_port()
        remote_cls = ray.remote(PolicyWorker)
        self.workers = [
            remote_cls.options(
                num_cpus=1,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle),
                name=None,
            ).remote(model_path, rank, n, addr, port, **worker_settings(cfg))
            for rank, bundle in enumerate(self.layout.bundle_of_rank)
        ]
        self.world_size = n

    # Every method below is a collective: all ranks are called together, or the others wait forever.

    def setup(self, *, total_opt_steps: int) -> dict[str, Any]:
        """Load and shard the model, build the optimizer; rank 0's summary (parameters, device)."""
        return ray.get([w.setup.remote(total_opt_steps=total_opt_steps) for w in self.workers])[0]

    def compute_logprobs(self, samples: list[dict[str, Any]], *, which: str, micro_batch_size: int,
                         temperature: float) -> list[Any]:
        """Per-token log-probs of each sample under "policy" or "ref" at `temperature`, in sample order."""
        return self._forward_only(samples, lambda w, share: w.compute_logprobs.remote(
            share, which=which, micro_batch_size=micro_batch_size, temperature=temperature))

    def eval_nll_per_sample(self, samples: list[dict[str, Any]]) -> list[tuple[float, float]]:
        """(sum of token NLL over the loss mask, token count) of each sample, in sample order."""
        return self._forward_only(samples, lambda w, share: w.eval_nll_per_sample.remote(share))

    def update_policy(self, samples: list[dict[str, Any]], *, denominator: float, temperature: float) -> list[dict[str, float]]:
        """One optimizer step of the GRPO loss over a mini-batch; each rank's sums, in rank order."""
        shares = split_for_ranks(samples, self.world_size)  # none empty: config.validate checks that batches divide
        return ray.get([w.update_policy.remote(s, denominator=denominator, temperature=temperature)
                        for w, s in zip(self.workers, shares)])

    def sft_step(self, samples: list[dict[str, Any]], *, denominator: float) -> list[dict[str, float]]:
        """One optimizer step of masked cross-entropy over a batch; each rank's sums, in rank order."""
        shares = split_for_ranks(samples, self.world_size)
        return ray.get([w.sft_step.remote(s, denominator=denominator) for w, s in zip(self.workers, shares)])

    def offload_optimizer(self) -> int:
        """Every rank's optimizer state to host memory until its next update; bytes moved, all ranks."""
        return sum(ray.get([w.offload_optimizer.remote() for w in self.workers]))

    def save_checkpoint(self, path: str) -> None:
        ray.get([w.save_checkpoint.remote(path) for w in self.workers])

    def load_checkpoint(self, path: str) -> None:
        ray.get([w.load_checkpoint.remote(path) for w in self.workers])

    def save_hf(self, out_dir: str, *, max_shard_size: str) -> None:
        ray.get([w.save_hf.remote(out_dir, max_shard_size=max_shard_size) for w in self.workers])

    def _forward_only(self, samples: list[Any], call) -> list[Any]:
        """Every rank runs the same number of forwards (FSDP all-gathers are collectives): the
        workers even out their micro-batch counts (PolicyWorker._plan) but can't run without a
        sample, so a rank whose share is empty gets the first sample and its result is dropped."""
        if not samples:
            return []
        shares = split_for_ranks(samples, self.world_size)
        results = ray.get([call(w, share or samples[:1]) for w, share in zip(self.workers, shares)])
        return merge_from_ranks([res[: len(share)] for res, share in zip(results, shares)], self.world_size, len(samples))

    def free_port(self) -> tuple[str, int]:
        """Address of rank 0's node and a free port there (for a rendezvous hosted by rank 0)."""
        rank0 = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self.layout.bundle_of_rank[0])
        return ray.get(_address_and_port.options(scheduling_strategy=rank0).remote(is_local()))

    def shutdown(self) -> None:
        # Kill rather than ask: after a failure another rank may be blocked in a collective and
        # would never answer. The processes' exit tears the process group down.
        for w in self.workers:
            ray.kill(w)
        remove_placement_group(self.pg)


class RolloutGroup:
    """`rollout.num_workers` RolloutWorker actors; prompts are split between them."""

    def __init__(self, cfg: Config, model_path: str):
        self.pg, self.workers, self.engine = start_rollout_workers(
            cfg, model_path, cfg.rollout.num_workers, cfg.rollout.gpus_per_worker, "ovlt-rollout")
        """self.engine: the engine the workers built ("hf" or "vllm"), what rollout.engine=auto resolved to."""

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        """Groups of `params.n` generations, in prompt order, prompts spread over the workers."""
        shares = split_for_ranks(prompts, len(self.workers))
        results = ray.get(
            [
                w.generate.remote(s, params if params.seed is None else _with_seed(params, params.seed + i))
                for i, (w, s) in enumerate(zip(self.workers, shares))
                if s
            ]
        )
        return merge_from_ranks(results, len(self.workers), len(prompts))

    def compute_logprobs(self, prompts: list[dict[str, Any]], responses: list[list[int]]) -> list[list[float]]:
        return ray.get(self.workers[0].compute_logprobs.remote(prompts, responses))

    def sleep(self) -> None:
        """Colocated vLLM engines free the GPU for the policy's phases (no-op otherwise)."""
        ray.get([w.sleep.remote() for w in self.workers])

    def can_ipc(self) -> bool:
        return all(ray.get([w.can_ipc.remote() for w in self.workers]))

    def start_ipc_update(self) -> None:
        ray.get([w.start_ipc_update.remote() for w in self.workers])

    def ipc_update(self, chunk: dict[str, Any]) -> None:
        ray.get([w.ipc_update.remote(chunk) for w in self.workers])

    def finish_ipc_update(self) -> None:
        ray.get([w.finish_ipc_update.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        remove_placement_group(self.pg)


def start_rollout_workers(cfg: Config, model_path: str, n: int, gpus: float, name: str,
                          device: str | None = None) -> tuple[Any, list[Any], str]:
    """`n` RolloutWorker actors of `gpus` GPUs each in one placement group named `name` (placed
    by placement.place); returns (placement group, workers, the engine they built: "hf" or "vllm").
    `device` is RolloutWorker's (None: cfg.trainer.device)."""
    from ovlt_rl.workers.rollout import RolloutWorker

    pg = place(n, gpus, {}, name).pg
    remote_cls = ray.remote(RolloutWorker)
    workers = [
        remote_cls.options(
            num_cpus=1,
            num_gpus=gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(cfg, model_path, device)
        for i in range(n)
    ]
    try:
        built = set(ray.get([w.ready.remote() for w in workers]))
        if len(built) != 1:
            raise RuntimeError(f"rollout workers built different engines {sorted(built)} (rollout.engine=auto "
                               "on nodes with and without vLLM): install the same packages on every node")
    except BaseException:  # an engine that failed to load: free the others' GPUs before the error goes up
        for w in workers:
            ray.kill(w)
        remove_placement_group(pg)
        raise
    return pg, workers, built.pop()


def split_for_ranks(items: list[Any], world: int) -> list[list[Any]]:
    """Deal items to ranks round-robin (equal counts when world divides len(items))."""
    return [items[r::world] for r in range(world)]


def merge_from_ranks(results: list[list[Any]], world: int, n: int) -> list[Any]:
    """The inverse of split_for_ranks over `world` ranks: per-rank results (in rank order; trailing
    empty ones may be left out) back in the order of the `n` items."""
    out: list[Any] = [None] * n
    for r, res in enumerate(results):
        out[r::world] = res
    return out


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=seed)
