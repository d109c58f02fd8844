# Sourced by the cluster/*.sh scripts: the `ray` binary, the repo root, and the environment that
# decides where Ray listens and how it authenticates.
#
#   OVLT_LOOPBACK=1   local tests: every Ray process on 127.0.0.1, token auth off.
#                     Ray otherwise rewrites a 127.0.0.1 node address to the machine's network
#                     address; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on loopback.
#   (unset)           real clusters: token auth on (RAY_AUTH_MODE=token). Every node and every
#                     machine that submits jobs needs the head's token, in ~/.ray/auth_token or in
#                     RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH).
#   RAY=/path/to/ray  the Ray CLI to use (default: `ray` on PATH).

OVLT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-ray}"

if ! command -v "$RAY" >/dev/null 2>&1; then
    echo "error: the Ray CLI '$RAY' is not on PATH (pip install 'ray[default]', or set RAY=/path/to/ray)" >&2
    exit 2
fi

export RAY_USAGE_STATS_ENABLED=0
if [[ "${OVLT_LOOPBACK:-0}" == "1" ]]; then
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    export RAY_AUTH_MODE=disabled
    # Ray's dashboard probes cloud metadata servers (169.254.169.254, metadata.google.internal)
    # and posts a "usage stats disabled" notice to usage-stats.ray.io at start-up, even with
    # --disable-usage-stats. Route HTTP(S) to a closed loopback port so nothing leaves the machine;
    # loopback addresses themselves bypass the proxy.
    export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
    export HTTP_PROXY="$http_proxy" HTTPS_PROXY="$https_proxy"
    export no_proxy=127.0.0.1,localhost,::1 NO_PROXY=127.0.0.1,localhost,::1
    export RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
    # A second loopback "node" on one machine (tests) may take another 127.x address.
    OVLT_NODE_IP="${OVLT_NODE_IP:-127.0.0.1}"
    if [[ "$OVLT_NODE_IP" != 127.* ]]; then
        echo "error: OVLT_LOOPBACK=1 needs a loopback OVLT_NODE_IP (127.x.x.x), got $OVLT_NODE_IP" >&2
        exit 2
    fi
else
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
    OVLT_NODE_IP="${OVLT_NODE_IP:-}"
fi

# The dashboard (job API) address that submit/status/logs/stop talk to.
ovlt_dashboard_address() {
    if [[ -n "${OVLT_DASHBOARD:-}" ]]; then
        echo "$OVLT_DASHBOARD"
    elif [[ -n "${RAY_API_SERVER_ADDRESS:-}" ]]; then
        echo "$RAY_API_SERVER_ADDRESS"
    else
        echo "http://127.0.0.1:8265"
    fi
}

# Token mode needs a token on this machine before any CLI call; say where it comes from if absent.
ovlt_require_token() {
    if [[ "$RAY_AUTH_MODE" != "token" ]]; then return 0; fi
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then return 0; fi
    local path="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$path" ]]; then
        echo "error: RAY_AUTH_MODE=token but no token at $path and RAY_AUTH_TOKEN is unset." >&2
        echo "       On the head node, \`ray get-auth-token\` prints it; copy it here as $path" >&2
        echo "       (or export RAY_AUTH_TOKEN=...). For a local loopback cluster use OVLT_LOOPBACK=1." >&2
        exit 2
    fi
}
