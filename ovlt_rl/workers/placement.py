"""Where a worker group's ranks go: one node when one node can hold them, else as few nodes as fit.

A group of `n` ranks gets one placement group of `n` equal bundles (CPU, GPUs, custom resources).
When some node of the cluster has the total resources for all of them, the bundles are
STRICT_PACKed there (an FSDP group's collectives stay on NVLink); when none has, they are PACKed,
which Ray fills node by node, so the group spans as few nodes as it must. Totals, not what is free
now: a node that could hold the group but is busy is waited for, as before, rather than the group
being spread because of another job.

Ranks are then numbered node by node (all of node A's bundles, then node B's, in the order of each
node's first bundle), so that the ranks of one node are contiguous: hybrid sharding
(`ovlt_rl/workers/mesh.py`) shards within a node and replicates across nodes, and rank 0's node
hosts the rendezvous.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table

log = logging.getLogger(__name__)


def bundle(gpus: float, resources: dict[str, float]) -> dict[str, float]:
    """One rank's bundle: a CPU, its GPUs, and any custom resources (checked by config.validate)."""
    b: dict[str, float] = {"CPU": 1.0, **{k: float(v) for k, v in resources.items()}}
    if gpus:
        b["GPU"] = float(gpus)
    return b


def strategy(n: int, one: dict[str, float], node_totals: list[dict[str, float]]) -> str:
    """STRICT_PACK if some node's total resources hold all `n` bundles, else PACK (spread as needed)."""
    for total in node_totals:
        if all(total.get(key, 0.0) >= n * need for key, need in one.items()):
            return "STRICT_PACK"
    return "PACK"


def _node_totals() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _node_addresses() -> dict[str, str]:
    return {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}


@dataclass
class Layout:
    """A placed group: the placement group, and per rank its bundle index, node id and node address."""

    pg: PlacementGroup
    bundle_of_rank: list[int]
    node_of_rank: list[str]
    address_of_rank: list[str]

    @property
    def nodes(self) -> int:
        return len(set(self.node_of_rank))


def rank_order(bundle_nodes: dict[int, str]) -> list[int]:
    """Bundle indices in rank order: node by node, each node in the order of its first bundle."""
    first: dict[str, int] = {}
    for index in sorted(bundle_nodes):
        first.setdefault(bundle_nodes[index], index)
    return sorted(bundle_nodes, key=lambda i: (first[bundle_nodes[i]], i))


def place(n: int, gpus: float, resources: dict[str, float], name: str, timeout: float = 600) -> Layout:
    """Reserve `n` bundles and number the ranks node by node."""
    one = bundle(gpus, resources)
    how = strategy(n, one, _node_totals())
    pg = placement_group([dict(one) for _ in range(n)], strategy=how, name=name)
    try:
        ray.get(pg.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"{name}: Ray could not place {n} workers of {one} each ({how}) in {timeout:.0f} s; "
                           f"the cluster's nodes have {_node_totals()}") from None
    nodes = {int(i): node for i, node in placement_group_table(pg)["bundles_to_node_id"].items()}
    order = rank_order(nodes)
    addresses = _node_addresses()
    layout = Layout(pg, order, [nodes[i] for i in order], [addresses.get(nodes[i], "?") for i in order])
    if layout.nodes > 1:
        log.info("%s: %d workers over %d nodes (no node holds all of them); rank -> node: %s", name, n,
                 layout.nodes, ", ".join(f"{r}: {a}" for r, a in enumerate(layout.address_of_rank)))
    return layout
