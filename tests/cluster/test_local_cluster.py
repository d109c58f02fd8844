"""The cluster launchers end to end on this machine: a loopback Ray head started with
cluster/start_head.sh, the tiny GRPO submitted with cluster/submit.sh (it succeeds and writes its
outputs), a job with a bad reward function (it fails, with the error in its logs), and the head
stopped with cluster/stop.sh. Meanwhile a sampler records every TCP socket of the Ray instance's
processes: none may talk to, or bind, an address other than loopback, and ovlt's own processes
(the job's driver and actors) may not listen on a wildcard address either.

Slow (about 2-3 minutes on 2 cores): `pytest -m slow tests/cluster`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cluster_tools import (REPO, SocketSampler, free_port, grpo_overrides, head_command, job_status, loopback_env,
                           make_data, stop_node, submit)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A loopback Ray head (own ports, own short temp dir), stopped and checked gone at the end."""
    # Short: Ray's socket paths live under it and must stay under ~100 characters.
    temp_dir = tempfile.mkdtemp(prefix="ovr", dir="/tmp")
    dash = free_port()
    env = loopback_env(tmp_path_factory.mktemp("cache"), dash)
    sampler = SocketSampler(temp_dir)
    sampler.start()
    start = head_command(temp_dir, dash, 4)
    try:
        out = subprocess.run(start, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "auth: disabled" in out.stdout
        yield {"env": env, "temp_dir": temp_dir, "sampler": sampler, "dashboard": env["OVLT_DASHBOARD"]}
    finally:
        sampler.stop()
        stop_node(env, temp_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory)


def test_grpo_job_succeeds_and_writes_outputs(cluster, data_dir, tmp_path):
    # --chdir: the data paths are relative to the data's parent folder, not to Ray's repo copy.
    out = tmp_path / "grpo"
    sid = f"test-grpo-{int(time.time())}"
    args = ["--submission-id", sid, "--chdir", str(data_dir.parent), "--", "ovlt", "grpo", "recipe=tiny",
            *grpo_overrides(Path(data_dir.name), out)]
    res = submit(cluster, args, 240)
    status, logs = job_status(cluster, sid)
    assert res.returncode == 0 and status == "SUCCEEDED", f"{status}\n{logs[-6000:]}\n{res.stderr[-2000:]}"
    # The entrypoint ran the uploaded repo through `python -m ovlt.cli`, not an installed script.
    assert "python -m ovlt.cli grpo" in logs
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("reward/mean" in r and "actor/pg_loss" in r for r in rows)
    assert (out / "hf" / "config.json").is_file()
    assert any((out / "hf").glob("*.safetensors"))


def test_failing_job_reports_failed_with_the_error(cluster, data_dir, tmp_path):
    # The shorthand: a recipe file, the command (grpo) read from its name.
    sid = f"test-fail-{int(time.time())}"
    args = ["--submission-id", sid, "recipes/tiny/grpo.yaml", "reward.fn=does_not_exist.py:fn",
            *grpo_overrides(data_dir, tmp_path / "fail")]
    res = submit(cluster, args, 180)
    status, logs = job_status(cluster, sid)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert status == "FAILED"
    assert "grpo recipe=recipes/tiny/grpo.yaml" in logs
    assert "reward.fn='does_not_exist.py:fn'" in logs and "does not exist" in logs


def test_no_socket_leaves_loopback(cluster):
    sampler = cluster["sampler"]
    # Let the sampler see the idle cluster once more after the jobs.
    time.sleep(1.5)
    assert sampler.samples >= 10 and sampler.sockets_seen > 0
    seen = " ".join(sampler.seen_cmdlines.values())
    assert "gcs_server" in seen and "raylet" in seen  # the sampler watched the daemons...
    assert "ray::PolicyWorker" in seen or "ovlt.cli" in seen  # ...and the jobs' processes
    assert not sampler.bad, "sockets off loopback:\n" + "\n".join(map(str, sorted(sampler.bad)))
