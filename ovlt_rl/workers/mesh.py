"""FSDP2's device mesh for `actor.sharding`: "full" shards every parameter over all ranks (the
default mesh); "hybrid" shards within each node and replicates across nodes (HSDP), so that only
gradient all-reduces cross the slower links between nodes, at the cost of one node's share of the
model per rank instead of 1/world.

The ranks of a node are contiguous (ovlt_rl/workers/placement.py numbers them node by node), so
the 2-D mesh is (nodes, ranks per node): dimension 0 replicates, dimension 1 shards.
"""

from __future__ import annotations

import torch.distributed as dist


def node_layout(node_of_rank: list[str]) -> tuple[int, int]:
    """(nodes, ranks per node) of a group whose ranks are numbered node by node; an error otherwise."""
    runs: list[tuple[str, int]] = []
    for node in node_of_rank:
        if runs and runs[-1][0] == node:
            runs[-1] = (node, runs[-1][1] + 1)
        else:
            runs.append((node, 1))
    if len({node for node, _ in runs}) != len(runs):
        raise RuntimeError(f"actor.sharding=hybrid: the ranks of a node are not contiguous ({node_of_rank})")
    sizes = sorted({count for _, count in runs})
    if len(sizes) != 1:
        raise RuntimeError(
            f"actor.sharding=hybrid needs the same number of policy ranks on every node; Ray placed "
            f"{[count for _, count in runs]} ranks on {len(runs)} nodes. Use a multiple of the GPUs per node "
            "for actor.num_workers, or actor.sharding=full"
        )
    return len(runs), sizes[0]


def policy_mesh(sharding: str, device_type: str, node_id: str):
    """None (full sharding: FSDP2's default mesh over the whole group) or the hybrid 2-D mesh.
    A collective: every rank passes its own node id."""
    if sharding == "full":
        return None
    from torch.distributed.device_mesh import init_device_mesh

    nodes: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(nodes, node_id)
    replicas, per_node = node_layout(nodes)
    return init_device_mesh(device_type, (replicas, per_node), mesh_dim_names=("replicate", "shard"))
