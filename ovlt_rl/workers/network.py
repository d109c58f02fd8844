"""The network interface torch.distributed's gloo uses on this node.

gloo binds the address its host name resolves to unless GLOO_SOCKET_IFNAME names an interface. On
many clusters the host name resolves to a loopback alias (127.0.1.1 on Debian) or to a management
network the other nodes cannot reach, and the ranks then hang or fail in the first collective. So,
unless told otherwise, a rank uses the interface that carries its node's Ray address: the network
Ray already reaches the node on (cluster/start_*.sh's OVLT_NODE_IP chooses it).

Told otherwise: GLOO_SOCKET_IFNAME in the environment, set by a local run (lo), by the job's
runtime_env, or by `trainer.network_interface` (which sets NCCL_SOCKET_IFNAME too; see
ovlt_rl/workers/group.py init_ray). NCCL otherwise picks its own interfaces (InfiniBand first).
"""

from __future__ import annotations

import os
import socket

import psutil


def interface_of(ip: str) -> str | None:
    """The name of the interface that holds address `ip` on this machine, if any."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


def choose_gloo_interface(node_ip: str) -> str:
    """Set GLOO_SOCKET_IFNAME for this process (before init_process_group) and return it; "" when
    no interface holds `node_ip` (gloo then resolves the host name, its default)."""
    names = psutil.net_if_addrs()
    given = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if given:
        missing = [n for n in given.split(",") if n not in names]
        if missing:
            raise RuntimeError(
                f"GLOO_SOCKET_IFNAME={given} (from trainer.network_interface or the job's environment): node "
                f"{node_ip} has no interface {', '.join(missing)}; its interfaces are {', '.join(sorted(names))}"
            )
        return given
    name = interface_of(node_ip)
    if name:
        os.environ["GLOO_SOCKET_IFNAME"] = name
    return name or ""


def this_node(rendezvous_host: str) -> tuple[str, str]:
    """(address, id) of this process's node: Ray's, in an actor. A test or benchmark that runs a
    worker in its own process without Ray gets the rendezvous host and the host name instead
    (asking Ray there would start a Ray instance, and report the machine's outward address)."""
    import ray

    if ray.is_initialized():
        return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()
    return rendezvous_host, socket.gethostname()
