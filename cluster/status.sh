#!/usr/bin/env bash
# The cluster's nodes and resources, and a table of its jobs.
#
#   cluster/status.sh [--address URL]      (job API address as for submit.sh)
#
# `ray status` runs where it reaches the cluster's GCS (a cluster node, or RAY_ADDRESS set); the
# job table works from any machine that reaches the job API.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
address="$(ovlt_dashboard_address)"
if [[ "${1:-}" == "--address" ]]; then address="$2"; fi
ovlt_require_token
"$RAY" status 2>/dev/null || echo "(\`ray status\` found no cluster from here; showing jobs only)"
echo
py="$(dirname "$(command -v "$RAY")")/python"
[[ -x "$py" ]] || py=python3
"$py" - "$address" <<'PY'
import sys, time
from ray.job_submission import JobSubmissionClient

jobs = JobSubmissionClient(sys.argv[1]).list_jobs()
jobs.sort(key=lambda j: j.start_time or 0)
print(f"{'SUBMISSION ID':42} {'STATUS':10} {'STARTED':19}  ENTRYPOINT")
for j in jobs:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
    entry = j.entrypoint if len(j.entrypoint) < 90 else j.entrypoint[:87] + "..."
    print(f"{j.submission_id or j.job_id:42} {j.status.value if hasattr(j.status, 'value') else j.status:10} {started}  {entry}")
PY
