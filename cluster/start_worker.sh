#!/usr/bin/env bash
# Join a worker node to the cluster (run it on each worker machine).
#
#   cluster/start_worker.sh HEAD_IP:6379 [--num-gpus N] [--num-cpus N] [--temp-dir DIR]
#                           [-- extra `ray start` flags]
#
# Token auth (the default) needs the head's token here first: ~/.ray/auth_token, or
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH. OVLT_LOOPBACK=1 (tests) joins on 127.0.0.1 without auth.
# OVLT_NODE_IP=ADDR sets this node's address when it has several networks (e.g. pick the one
# that reaches the head over InfiniBand/fast Ethernet); gloo between policy ranks uses the same
# network unless trainer.network_interface says otherwise. With OVLT_LOOPBACK=1 it may be another
# loopback address (127.0.0.2): a second "node" on one machine, as tests/cluster/test_two_nodes.py runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
head="$1"; shift
extra=()
opts=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --num-gpus) opts+=(--num-gpus "$2"); shift 2 ;;
        --num-cpus) opts+=(--num-cpus "$2"); shift 2 ;;
        --temp-dir) opts+=(--temp-dir "$2"); shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
    esac
done
ovlt_require_token
if [[ "${OVLT_LOOPBACK:-0}" == "1" ]]; then
    # A second node on this machine (tests: 127.0.0.2 beside a head on 127.0.0.1). Ray refuses to
    # join a cluster while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with it on rewrites a head
    # address of 127.0.0.1 or localhost to the machine's network address, where the loopback head
    # does not listen. The IPv4-mapped form reaches the same socket and is not rewritten.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
    case "$head" in 127.0.0.1:*|localhost:*) head="[::ffff:127.0.0.1]:${head##*:}" ;; esac
fi
if [[ -n "$OVLT_NODE_IP" ]]; then opts+=(--node-ip-address "$OVLT_NODE_IP"); fi

"$RAY" start --address "$head" --disable-usage-stats ${opts[@]+"${opts[@]}"} ${extra[@]+"${extra[@]}"}
