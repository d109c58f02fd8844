"""Worker groups on Ray: a placement group per role, actors placed into its bundles.

    init_ray(cfg)                         local Ray on 127.0.0.1, or join a cluster
    policy = PolicyGroup(cfg, model_path) FSDP2 ranks (one torch.distributed group)
    rollout = RolloutGroup(cfg, model_path)

The driver calls actors explicitly (`policy.call("setup", ...)`): no dispatch decorators, so what
runs where is visible in the controller.
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
        from ovlt_rl.workers.policy import PolicyWorker

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
            ).remote(cfg, model_path, rank, n, addr, port)
            for rank, bundle in enumerate(self.layout.bundle_of_rank)
        ]
        self.world_size = n

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call `method` with the same arguments on every rank; results in rank order."""
        return ray.get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def call_split(self, method: str, shares: list[Any], *args: Any) -> list[Any]:
        """Call `method` on every rank with its own first argument (`shares[rank]`)."""
        assert len(shares) == self.world_size
        return ray.get([getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shares)])

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
        from ovlt_rl.workers.rollout import RolloutWorker

        n, gpus = cfg.rollout.num_workers, cfg.rollout.gpus_per_worker
        self.pg = place(n, gpus, {}, "ovlt-rollout").pg
        remote_cls = ray.remote(RolloutWorker)
        self.workers = [
            remote_cls.options(
                num_cpus=1,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(cfg, model_path)
            for i in range(n)
        ]
        built = set(ray.get([w.ready.remote() for w in self.workers]))
        if len(built) != 1:
            raise RuntimeError(f"rollout workers built different engines {sorted(built)} (rollout.engine=auto "
                               "on nodes with and without vLLM): install the same packages on every node")
        self.engine = built.pop()
        """The engine the workers built ("hf" or "vllm"), what rollout.engine=auto resolved to."""

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        """Groups of `params.n` generations, in prompt order, prompts spread over the workers."""
        n = len(self.workers)
        shares = [prompts[i::n] for i in range(n)]
        results = ray.get(
            [
                w.generate.remote(s, params if params.seed is None else _with_seed(params, params.seed + i))
                for i, (w, s) in enumerate(zip(self.workers, shares))
                if s
            ]
        )
        out: list[list[Generation]] = [None] * len(prompts)  # type: ignore[list-item]
        for i, res in enumerate(results):
            out[i::n] = res
        return out

    def load_weights(self, state_dict_ref: Any) -> None:
        ray.get([w.load_weights.remote(state_dict_ref) for w in self.workers])

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


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=seed)
