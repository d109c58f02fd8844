#!/usr/bin/env bash
# Submit an ovlt command to the cluster as a Ray job (the repo is uploaded as the working dir).
#
#   cluster/submit.sh [options] -- ovlt grpo recipe=openvlthinker/iter1_grpo reward.fn=my_rewards.py:score
#   cluster/submit.sh [options] recipes/openvlthinker/iter1_sft.yaml [key=value ...]
#
# The second form infers the command from the file name (..._sft.yaml -> sft, grpo, cycle, eval,
# prepare) and runs `ovlt COMMAND recipe=FILE key=value ...`. Inside the job `ovlt` runs as
# `python -m ovlt.cli` from the uploaded repo, so the job's Python needs only the dependencies
# (on the nodes, or through runtime_env.yaml's pip list), not an installed ovlt. The driver joins
# the cluster through the RAY_ADDRESS that Ray sets for jobs.
#
# Options:
#   --address URL         job API of the head (default: $OVLT_DASHBOARD, $RAY_API_SERVER_ADDRESS,
#                         or http://127.0.0.1:8265)
#   --no-wait             return after submitting (follow with cluster/logs.sh ID --follow)
#   --submission-id ID    name the job (default: ovlt-COMMAND-DATE-RANDOM)
#   --runtime-env FILE    default: cluster/runtime_env.yaml
#   --entrypoint-num-gpus N   GPUs reserved for the driver itself (default 0: workers hold them)
#   --chdir DIR           run the command in DIR (default: $OVLT_JOB_DIR if set), e.g. a checkout
#                         on shared storage, so that relative paths in recipes (outputs/...,
#                         data/...) resolve there and not in Ray's temporary copy of the repo;
#                         the code still comes from the uploaded copy
#   --dry-run             print the job's command (one word per line) and exit, submitting nothing
#
# Exit status: 0 if the job SUCCEEDED (or was submitted, with --no-wait), 1 if it failed.
# The command's words go to Ray as separate arguments; Ray quotes each one for the job's shell.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() { sed -n '2,25p' "$0" >&2; exit 2; }

address="$(ovlt_dashboard_address)"
runtime_env="$OVLT_REPO/cluster/runtime_env.yaml"
submission_id=""
chdir="${OVLT_JOB_DIR:-}"
job_opts=()
dry_run=0
cmd=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --address) address="$2"; shift 2 ;;
        --no-wait) job_opts+=(--no-wait); shift ;;
        --submission-id) submission_id="$2"; shift 2 ;;
        --runtime-env) runtime_env="$2"; shift 2 ;;
        --entrypoint-num-gpus) job_opts+=(--entrypoint-num-gpus "$2"); shift 2 ;;
        --chdir) chdir="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage ;;
        --) shift; cmd=("$@"); break ;;
        -*) echo "error: unknown option $1" >&2; usage ;;
        *) cmd=("$@"); break ;;
    esac
done
[[ ${#cmd[@]} -gt 0 ]] || usage

# Shorthand: a recipe file first -> `ovlt COMMAND recipe=FILE ...`.
if [[ "${cmd[0]}" == *.yaml || "${cmd[0]}" == *.yml ]]; then
    recipe="${cmd[0]}"
    if [[ ! -f "$recipe" && ! -f "$OVLT_REPO/$recipe" ]]; then
        echo "error: recipe file $recipe not found" >&2; exit 2
    fi
    # The job runs in an uploaded copy of the repo: the recipe must be a path inside it.
    if [[ -f "$recipe" ]]; then
        abs="$(cd "$(dirname "$recipe")" && pwd)/$(basename "$recipe")"
    else
        abs="$OVLT_REPO/$recipe"
    fi
    case "$abs" in
        "$OVLT_REPO"/*) recipe="${abs#"$OVLT_REPO"/}" ;;
        *) echo "error: recipe $recipe is outside the repo ($OVLT_REPO), which is what the job gets" >&2; exit 2 ;;
    esac
    name="$(basename "${recipe%.*}")"
    command=""
    for part in ${name//[_.-]/ }; do
        case "$part" in sft|grpo|cycle|eval|prepare) command="$part" ;; esac
    done
    if [[ -z "$command" ]]; then
        echo "error: can't tell the command from the file name $name (no sft/grpo/cycle/eval/prepare in it);" >&2
        echo "       use: cluster/submit.sh -- ovlt COMMAND recipe=$recipe ..." >&2
        exit 2
    fi
    cmd=(ovlt "$command" "recipe=$recipe" "${cmd[@]:1}")
fi

# `ovlt ...` -> `python -m ovlt.cli ...` (no console script needed in the job's environment).
if [[ "${cmd[0]}" == "ovlt" ]]; then
    cmd=(python -m ovlt.cli "${cmd[@]:1}")
    if [[ -z "$submission_id" && ${#cmd[@]} -gt 3 ]]; then
        submission_id="ovlt-${cmd[3]}-$(date +%Y%m%d-%H%M%S)-$RANDOM"
    fi
fi
if [[ -n "$submission_id" ]]; then job_opts+=(--submission-id "$submission_id"); fi
if [[ -n "$chdir" ]]; then
    # Ray prepends the uploaded copy to PYTHONPATH, so `python -m ovlt.cli` still finds it.
    cmd=(sh -c 'cd "$0" && exec "$@"' "$chdir" "${cmd[@]}")
fi

if [[ "$dry_run" == "1" ]]; then
    printf '%s\n' "${cmd[@]}"
    exit 0
fi
ovlt_require_token
cd "$OVLT_REPO"
echo "ovlt: submitting to $address: ${cmd[*]}" >&2
exec "$RAY" job submit --address "$address" --runtime-env "$runtime_env" --working-dir . \
    ${job_opts[@]+"${job_opts[@]}"} -- "${cmd[@]}"
