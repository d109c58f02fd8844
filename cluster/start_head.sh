#!/usr/bin/env bash
# Start the Ray head node of an ovlt cluster (run it on the head machine).
#
#   cluster/start_head.sh [--num-gpus N] [--num-cpus N] [--port 6379]
#                         [--dashboard-host 127.0.0.1] [--dashboard-port 8265]
#                         [--dashboard-agent-port 52365] [--client-port 10001]
#                         [--temp-dir DIR] [-- extra `ray start` flags]
#
# Real clusters: token authentication is on (RAY_AUTH_MODE=token); a token is generated in
# ~/.ray/auth_token if there is none. Copy it to every worker node and to the machines that submit
# jobs. The dashboard (and the job API) binds 127.0.0.1 unless --dashboard-host says otherwise:
# reach it through an SSH tunnel (ssh -L 8265:127.0.0.1:8265 head), or bind 0.0.0.0 on a trusted
# network (the token still guards it).
#
# Local tests: OVLT_LOOPBACK=1 binds every Ray process to 127.0.0.1 and turns auth off. Pick free
# ports (and a short --temp-dir: Ray's socket paths must stay under ~100 characters) to run beside
# other Ray instances on the same machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

port=6379
dashboard_host="${OVLT_DASHBOARD_HOST:-127.0.0.1}"
dashboard_port=8265
extra=()
opts=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) port="$2"; shift 2 ;;
        --dashboard-host) dashboard_host="$2"; shift 2 ;;
        --dashboard-port) dashboard_port="$2"; shift 2 ;;
        --dashboard-agent-port) opts+=(--dashboard-agent-listen-port "$2"); shift 2 ;;
        --client-port) opts+=(--ray-client-server-port "$2"); shift 2 ;;
        --num-gpus) opts+=(--num-gpus "$2"); shift 2 ;;
        --num-cpus) opts+=(--num-cpus "$2"); shift 2 ;;
        --temp-dir) opts+=(--temp-dir "$2"); shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -n "$OVLT_NODE_IP" ]]; then
    if [[ "${OVLT_LOOPBACK:-0}" == "1" && "$dashboard_host" != "127.0.0.1" ]]; then
        echo "note: OVLT_LOOPBACK=1: dashboard bound to 127.0.0.1, not $dashboard_host" >&2
        dashboard_host=127.0.0.1
    fi
    opts+=(--node-ip-address "$OVLT_NODE_IP")
fi
if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    "$RAY" get-auth-token --generate >/dev/null
fi

"$RAY" start --head --port "$port" \
    --dashboard-host "$dashboard_host" --dashboard-port "$dashboard_port" \
    --disable-usage-stats ${opts[@]+"${opts[@]}"} ${extra[@]+"${extra[@]}"}

host="${OVLT_NODE_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
echo
echo "ovlt: head started (auth: $RAY_AUTH_MODE)."
echo "  workers:  cluster/start_worker.sh ${host:-HEAD_IP}:$port --num-gpus N"
echo "  jobs:     OVLT_DASHBOARD=http://$dashboard_host:$dashboard_port cluster/submit.sh -- ovlt grpo recipe=..."
if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    echo "  token:    ~/.ray/auth_token (or \`ray get-auth-token\`): copy it to the workers and submitting machines"
fi
