"""A Ray cluster of two nodes on one machine: a head on 127.0.0.1 and a second node on 127.0.0.2,
each with one `policy_slot` resource, so the tiny GRPO's two policy ranks (each needing a slot)
cannot share a node. Through cluster/submit.sh:

- the GRPO job spans both nodes (gloo over loopback, hybrid sharding: replicated across the two
  nodes), is SIGKILLed after its first checkpoint and, resubmitted, resumes and finishes;
- a job whose trainer.output_dir is another folder on the second node (a bind mount in that node's
  own mount namespace: a node-local disk at the same path) stops before training, saying the folder
  must be on storage shared by all nodes;
- no socket of either node's Ray processes leaves loopback (on the second node Ray's own gRPC
  server in each worker process listens on every interface, as Ray does on any node whose address
  is not 127.0.0.1: one such port per process is allowed, see cluster_tools.SocketSampler).

Slow (3 min 0 s on 2 cores with little else running, 4 to 6 min beside other work): `pytest -m slow tests/cluster/test_two_nodes.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cluster_tools import (REPO, SocketSampler, free_port, grpo_overrides, head_command, job_status, loopback_env,
                           make_data, ray_instance, stop_node, submit)

pytestmark = [pytest.mark.slow, pytest.mark.multinode]  # make test-cluster (not in make test: CI time)

SLOT = '{"policy_slot": 1}'


def _start_second_node(env: dict[str, str], head: str, temp_dir: str, hide: tuple[Path, Path] | None) -> subprocess.CompletedProcess:
    """cluster/start_worker.sh on 127.0.0.2; with `hide` = (path, other), in a mount namespace of its
    own where `path` shows `other`'s contents (Ray's daemons and workers inherit it)."""
    start = [str(REPO / "cluster" / "start_worker.sh"), head, "--num-cpus", "1", "--temp-dir", temp_dir,
             "--", f"--resources={SLOT}", "--dashboard-agent-listen-port", str(free_port())]
    if hide:
        # sh -c 'script' OTHER PATH cmd...: $0=OTHER, $1=PATH, and after `shift` "$@" is the command.
        start = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 'mount --bind "$0" "$1" && shift && exec "$@"', str(hide[1]), str(hide[0]), *start]
    return subprocess.run(start, env={**env, "OVLT_NODE_IP": "127.0.0.2"}, cwd=REPO, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    head_dir = tempfile.mkdtemp(prefix="ovh", dir="/tmp")
    node_dir = tempfile.mkdtemp(prefix="ovn", dir="/tmp")
    storage = tmp_path_factory.mktemp("storage")
    private, other = storage / "private", storage / "other"
    private.mkdir()
    other.mkdir()
    dash, gcs = free_port(), free_port()
    env = loopback_env(tmp_path_factory.mktemp("cache"), dash)
    samplers = [SocketSampler(head_dir), SocketSampler(node_dir, ray_worker_listener=True)]
    for s in samplers:
        s.start()
    try:
        out = subprocess.run(head_command(head_dir, dash, 3, gcs) + ["--", f"--resources={SLOT}"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        node = _start_second_node(env, f"127.0.0.1:{gcs}", node_dir, (private, other))
        hidden = node.returncode == 0
        if not hidden:  # no mount namespaces here (no CAP_SYS_ADMIN): the storage test skips
            node = _start_second_node(env, f"127.0.0.1:{gcs}", node_dir, None)
        assert node.returncode == 0, node.stdout[-3000:] + node.stderr[-3000:]
        yield {"env": env, "dashboard": env["OVLT_DASHBOARD"], "head_dir": head_dir, "samplers": samplers,
               "shared": storage / "shared", "private": private if hidden else None}
    finally:
        for s in samplers:
            s.stop()
        stop_node(env, node_dir)
        stop_node(env, head_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory)


def _args(sid: str, data: Path, out: Path, *more: str) -> list[str]:
    return ["--submission-id", sid, "--", "ovlt", "grpo", "recipe=tiny", *grpo_overrides(data, out),
            "actor.num_workers=2", "actor.resources_per_worker.policy_slot=1", *more]


def _driver_pid(head_dir: str, sid_out: Path) -> int | None:
    for p in ray_instance.instance_processes(head_dir):
        try:
            cmd = p.cmdline()
        except Exception:
            continue
        if "ovlt.cli" in cmd and f"trainer.output_dir={sid_out}" in cmd:
            return p.pid
    return None


def _wait_terminal(cluster, sid: str, timeout: float) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        status, logs = job_status(cluster, sid)
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return status, logs
        time.sleep(1)


def test_grpo_over_two_nodes_resumes_after_sigkill(two_nodes, data_dir):
    out = two_nodes["shared"] / "grpo"
    more = ("actor.sharding=hybrid", "trainer.total_steps=8", "trainer.save_every=1")
    first = f"test-2n-{int(time.time())}"
    res = submit(two_nodes, ["--no-wait", *_args(first, data_dir, out, *more)], 60)
    assert res.returncode == 0, res.stderr[-3000:]
    # SIGKILL the job's driver once the first checkpoint is committed (a folder renamed into place).
    deadline, polls = time.monotonic() + 300, 0
    while not list((out / "checkpoints").glob("step_*")):
        polls += 1
        if polls % 20 == 0:
            status, logs = job_status(two_nodes, first)
            assert status in ("PENDING", "RUNNING") and time.monotonic() < deadline, f"{status}\n{logs[-6000:]}"
        time.sleep(0.1)
    pid = _driver_pid(two_nodes["head_dir"], out)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status, logs = _wait_terminal(two_nodes, first, 120)
    assert status == "FAILED", f"{status}\n{logs[-3000:]}"
    assert not (out / "hf").exists()
    # The two ranks were on different nodes, rank 0's store on its node's address.
    placed = [line for line in logs.splitlines() if "rank -> node:" in line]
    assert placed and "127.0.0.1" in placed[0] and "127.0.0.2" in placed[0], logs[-6000:]

    second = first + "-resume"
    res = submit(two_nodes, _args(second, data_dir, out, *more), 400)
    status, logs = job_status(two_nodes, second)
    assert res.returncode == 0 and status == "SUCCEEDED", f"{status}\n{logs[-6000:]}\n{res.stderr[-2000:]}"
    resumed = next(line for line in logs.splitlines() if "resumed from" in line)
    assert "(step 8)" not in resumed, resumed  # it continued from a checkpoint before the end
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == set(range(1, 9)) and rows[-1]["step"] == 8
    assert all("actor/pg_loss" in r for r in rows)
    assert (out / "hf" / "config.json").is_file()
    # The last checkpoint, saved by the hybrid-sharded ranks (shards replicated across the nodes),
    # reassembles into the same weights as the final hf/ model.
    from safetensors.torch import load_file

    from ovlt_rl.checkpoint_export import export_checkpoint

    exported = export_checkpoint(out)
    hf, ex = (load_file(next(Path(d).glob("*.safetensors"))) for d in (out / "hf", exported))
    assert hf.keys() == ex.keys() and all((hf[k] == ex[k]).all() for k in hf)


def test_output_dir_not_shared_fails_clearly(two_nodes, data_dir):
    if two_nodes["private"] is None:
        pytest.skip("no mount namespaces on this machine (unshare -m failed): can't give the second node its own folder")
    sid = f"test-2n-storage-{int(time.time())}"
    res = submit(two_nodes, _args(sid, data_dir, two_nodes["private"] / "run"), 240)
    status, logs = job_status(two_nodes, sid)
    assert res.returncode == 1 and status == "FAILED", f"{status}\n{logs[-6000:]}"
    assert "is not the same folder on every node" in logs and "storage shared by all nodes" in logs, logs[-6000:]
    msg = next(line for line in logs.splitlines() if "is not the same folder on every node" in line)
    assert "on node 127.0.0.2 does not see the marker" in msg and "on node 127.0.0.1" not in msg, msg
    assert not list((two_nodes["private"] / "run").glob("checkpoints/step_*"))


def test_no_socket_leaves_loopback(two_nodes):
    time.sleep(1.5)
    for sampler in two_nodes["samplers"]:
        assert sampler.samples >= 10 and sampler.sockets_seen > 0
        assert not sampler.bad, "sockets off loopback:\n" + "\n".join(map(str, sorted(sampler.bad)))
    second = two_nodes["samplers"][1]
    assert "raylet" in " ".join(second.seen_cmdlines.values())
    # It watched our actors on the second node too (a policy rank per job: Ray's gRPC port each).
    assert second.wildcard_ports and all(len(ports) == 1 for ports in second.wildcard_ports.values())
