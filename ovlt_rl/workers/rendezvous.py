"""torch.distributed rendezvous stores that listen on one address, not on every interface.

torch's TCPStore server (what `init_process_group` builds from MASTER_ADDR/MASTER_PORT) binds
the wildcard address (`::`), whatever host name it is given: the store, which has no
authentication, would be reachable from the machine's network during a run. Here the server
listens on a socket we bind ourselves to `host` (127.0.0.1 for a local run, the node's cluster
address on a cluster) and hand to TCPStore (`master_listen_fd`); clients connect to `host` as
before.
"""

from __future__ import annotations

import datetime
import socket

import torch.distributed as dist


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str) -> int:
    """A TCP port that is free on `host` now (the caller binds it again soon after)."""
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_store(host: str, port: int, world_size: int | None, *, is_master: bool, timeout: datetime.timedelta) -> dist.TCPStore:
    """The server (is_master) listening on host:port only, or a client connecting to it.
    world_size: every member, server included (the server waits for them), or None: no fixed size."""
    if not is_master:
        return dist.TCPStore(host, port, world_size, False, timeout)
    sock = socket.socket(_family(host))
    try:
        # The port was probed free by `free_port` and closed: allow rebinding it at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} for the torch.distributed rendezvous: {e}") from e
    # The store owns the descriptor from here on (it closes it): detach it from the Python object.
    return dist.TCPStore(host, port, world_size, True, timeout, master_listen_fd=sock.detach(), use_libuv=True)
