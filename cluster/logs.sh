#!/usr/bin/env bash
# A job's status and logs.
#
#   cluster/logs.sh SUBMISSION_ID [--follow] [--address URL]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [[ $# -lt 1 || "$1" == -* ]]; then sed -n '2,4p' "$0" >&2; exit 2; fi
id="$1"; shift
address="$(ovlt_dashboard_address)"
follow=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --follow|-f) follow=(--follow); shift ;;
        --address) address="$2"; shift 2 ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
    esac
done
ovlt_require_token
"$RAY" job status --address "$address" "$id"
"$RAY" job logs --address "$address" ${follow[@]+"${follow[@]}"} "$id"
