"""Keeping a local run on loopback (no import of Ray here: this must run before Ray is imported).

A local run (no cluster address) keeps every connection on 127.0.0.1. Without these settings
Ray rewrites a 127.0.0.1 node address to the machine's network address (it reads
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import), its dashboard modules probe cloud metadata
servers and post a usage notice at start-up even with usage stats off (here HTTP(S) goes to a
closed loopback port; loopback itself bypasses the proxy), and gloo/NCCL bind the interface of the
host name.
"""

from __future__ import annotations

import os

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "GLOO_SOCKET_IFNAME": "lo",
    "NCCL_SOCKET_IFNAME": "lo",
    # vLLM builds its workers' rendezvous address from the machine's outward IP unless this is set.
    "VLLM_HOST_IP": "127.0.0.1",
}


def is_cluster_run(args: list[str]) -> bool:
    """True when this command joins an existing Ray cluster (a job, or trainer.ray_address=...)."""
    if os.environ.get("RAY_ADDRESS"):
        return True
    return any(a.startswith("trainer.ray_address=") and a.split("=", 1)[1] not in ("", "''", '""') for a in args)


_PROXY_KEYS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def apply(args: list[str]) -> None:
    """Set the loopback environment for a local run; call before anything imports Ray.

    OVLT_ALLOW_NETWORK=1 keeps Ray on loopback but leaves HTTP(S) alone (e.g. for wandb).
    """
    if is_cluster_run(args):
        return
    env = dict(LOOPBACK_ENV)
    if os.environ.get("OVLT_ALLOW_NETWORK") == "1":
        for k in _PROXY_KEYS:
            env.pop(k)
    os.environ.update(env)
