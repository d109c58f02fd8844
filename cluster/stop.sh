#!/usr/bin/env bash
# Stop a job, or the Ray processes of this node.
#
#   cluster/stop.sh job SUBMISSION_ID [--address URL]   stop one job (its actors are torn down)
#   cluster/stop.sh node [--temp-dir DIR]               stop Ray on this machine ("cluster" works too;
#                                                       run it on every node)
#
# `node` without --temp-dir runs `ray stop`, which ends every Ray process on the machine: right for
# a dedicated cluster node. With --temp-dir (the one given to start_head.sh/start_worker.sh) it
# ends only the processes of that Ray instance, by process id, leaving other Ray instances on the
# same machine (tests, other users) alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
what="${1:-}"; shift || true
case "$what" in
    job)
        [[ $# -ge 1 ]] || { echo "usage: cluster/stop.sh job SUBMISSION_ID [--address URL]" >&2; exit 2; }
        id="$1"; shift
        address="$(ovlt_dashboard_address)"
        if [[ "${1:-}" == "--address" ]]; then address="$2"; fi
        ovlt_require_token
        "$RAY" job stop --address "$address" "$id"
        ;;
    node|cluster)
        if [[ "${1:-}" == "--temp-dir" ]]; then
            # The Python next to the Ray CLI has psutil (a ray[default] dependency).
            py="$(dirname "$(command -v "$RAY")")/python"
            [[ -x "$py" ]] || py=python3
            exec "$py" "$OVLT_REPO/cluster/ray_instance.py" stop "$2"
        fi
        "$RAY" stop
        ;;
    *)
        sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
