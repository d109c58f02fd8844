#!/usr/bin/env bash
# Join a worker node to the cluster (run it on each worker machine).
#
#   cluster/start_worker.sh HEAD_IP:6379 [--num-gpus N] [--num-cpus N] [--temp-dir DIR]
#                           [-- extra `ray start` flags]
#
# Token auth (the default) needs the head's token here first: ~/.ray/auth_token, or
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH. OVLT_LOOPBACK=1 (tests) joins on 127.0.0.1 without auth.
# OVLT_NODE_IP=ADDR sets this node's address when it has several networks (e.g. pick the one
# that reaches the head over InfiniBand/fast Ethernet).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,10p' "$0" >&2
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
if [[ -n "$OVLT_NODE_IP" ]]; then opts+=(--node-ip-address "$OVLT_NODE_IP"); fi

"$RAY" start --address "$head" --disable-usage-stats ${opts[@]+"${opts[@]}"} ${extra[@]+"${extra[@]}"}
