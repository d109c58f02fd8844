"""The cluster launchers end to end on this machine: a loopback Ray head started with
cluster/start_head.sh, the tiny GRPO submitted with cluster/submit.sh (it succeeds and writes its
outputs), a job with a bad reward function (it fails, with the error in its logs), and the head
stopped with cluster/stop.sh. Meanwhile a sampler records every TCP socket of the Ray instance's
processes: none may talk to, or bind, an address other than loopback, and ovlt's own processes
(the job's driver and actors) may not listen on a wildcard address either.

Slow (about 2-3 minutes on 2 cores): `pytest -m slow tests/cluster`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _load_ray_instance():
    spec = importlib.util.spec_from_file_location("ray_instance", REPO / "cluster" / "ray_instance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ray_instance = _load_ray_instance()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "localhost") or ip.startswith("::ffff:127.")


class SocketSampler(threading.Thread):
    """Samples the TCP/UDP sockets of one Ray instance's processes (found by its temp dir)."""

    def __init__(self, temp_dir: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.temp_dir, self.every = temp_dir, every
        self.stop_event = threading.Event()
        self.bad: set[tuple] = set()
        self.seen_cmdlines: dict[int, str] = {}
        self.samples = 0
        self.sockets_seen = 0

    def run(self) -> None:
        import psutil

        while not self.stop_event.is_set():
            procs = {p.pid: p for p in ray_instance.instance_processes(self.temp_dir)}
            for c in psutil.net_connections(kind="inet"):
                if c.pid not in procs:
                    continue
                self.sockets_seen += 1
                if c.pid not in self.seen_cmdlines:
                    try:
                        self.seen_cmdlines[c.pid] = " ".join(procs[c.pid].cmdline())[:200]
                    except psutil.Error:
                        self.seen_cmdlines[c.pid] = "?"
                wildcard = bool(c.laddr) and c.laddr.ip in ("0.0.0.0", "::")
                # ovlt's own processes (the job's driver and its actors: the torch.distributed
                # store, gloo) listen on loopback only; a wildcard is allowed only to Ray's daemons
                # started by `ray start` (not checked here, see README "Safety and networking").
                # (The command line now: a Ray worker first seen as ray::IDLE may host an actor since.)
                ours = wildcard and any(k in self._cmdline(procs[c.pid]) for k in ("ovlt.cli", "ray::PolicyWorker", "ray::RolloutWorker"))
                local_ok = not c.laddr or _is_loopback(c.laddr.ip) or (wildcard and not ours)
                remote_ok = not c.raddr or _is_loopback(c.raddr.ip)
                if not (local_ok and remote_ok):
                    self.bad.add((c.pid, self.seen_cmdlines[c.pid], tuple(c.laddr), tuple(c.raddr) if c.raddr else (), c.status))
            self.samples += 1
            self.stop_event.wait(self.every)

    @staticmethod
    def _cmdline(proc) -> str:
        import psutil

        try:
            return " ".join(proc.cmdline())
        except psutil.Error:
            return "?"

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A loopback Ray head (own ports, own short temp dir), stopped and checked gone at the end."""
    # Short: Ray's socket paths live under it and must stay under ~100 characters.
    temp_dir = tempfile.mkdtemp(prefix="ovr", dir="/tmp")
    dash = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "RAY_API_SERVER_ADDRESS")}
    env.update(
        # The job's `python` is this interpreter: jobs inherit the head's environment.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY=str(BIN / "ray"),
        OVLT_LOOPBACK="1",
        OVLT_DASHBOARD=f"http://127.0.0.1:{dash}",
        OVLT_CACHE=str(tmp_path_factory.mktemp("cache")),
        HF_HUB_OFFLINE="1",
    )
    sampler = SocketSampler(temp_dir)
    sampler.start()
    start = [
        str(REPO / "cluster" / "start_head.sh"), "--num-cpus", "4", "--temp-dir", temp_dir,
        "--port", str(_free_port()), "--dashboard-port", str(dash),
        "--dashboard-agent-port", str(_free_port()), "--client-port", str(_free_port()),
    ]
    try:
        out = subprocess.run(start, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "auth: disabled" in out.stdout
        yield {"env": env, "temp_dir": temp_dir, "sampler": sampler, "dashboard": env["OVLT_DASHBOARD"]}
    finally:
        sampler.stop()
        stop = subprocess.run([str(REPO / "cluster" / "stop.sh"), "node", "--temp-dir", temp_dir],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        left = ray_instance.instance_processes(temp_dir)
        if left:  # stop.sh failed: don't leave them running
            ray_instance.stop_instance(temp_dir, grace=3)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "stopped" in stop.stdout
        assert not left, f"processes of the Ray instance left after cluster/stop.sh: {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small synthetic data set (the tiny prepare recipe, scaled down), made in this process."""
    from data_prep.pipeline import run_prepare
    from ovlt.config import load_config

    out = tmp_path_factory.mktemp("data")
    run_prepare(load_config("prepare", [
        "recipe=tiny", f"prepare.output_dir={out}", "prepare.synthetic_train=120", "prepare.synthetic_val=8",
        "prepare.synthetic_test=8", "prepare.distill.limit=60", "prepare.mix.sft_total=20",
    ]))
    assert (out / "rl.parquet").is_file() and (out / "val.parquet").is_file()
    return out


def _grpo_overrides(data: Path, out: Path) -> list[str]:
    """The tiny GRPO cut to 2 short steps. The job runs in Ray's copy of the repo: give absolute
    paths, or data paths relative to submit.sh's --chdir (the driver reads the data; the output dir
    must be absolute because the policy actors write into it from their own working dir)."""
    return [
        "model.path=tiny", f"data.prepare_dir={data}",
        f"data.train_files=[{data}/rl.parquet]", f"data.val_files=[{data}/val.parquet]",
        "data.rollout_batch_size=4", "rollout.n=4", "actor.global_batch_size=16", "actor.micro_batch_size=4",
        "data.max_response_length=24", "data.max_val_samples=4", "trainer.total_steps=2",
        "trainer.val_before_train=false", "trainer.val_every=0", "trainer.save_every=0",
        "reward.num_workers=1", "trainer.loggers=[console,jsonl]", f"trainer.output_dir={out}",
    ]


def _submit(cluster, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "cluster" / "submit.sh"), *args], env=cluster["env"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _job_status(cluster, submission_id: str) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster["dashboard"])
    return str(client.get_job_status(submission_id).value), client.get_job_logs(submission_id)


def test_grpo_job_succeeds_and_writes_outputs(cluster, data_dir, tmp_path):
    # --chdir: the data paths are relative to the data's parent folder, not to Ray's repo copy.
    out = tmp_path / "grpo"
    sid = f"test-grpo-{int(time.time())}"
    args = ["--submission-id", sid, "--chdir", str(data_dir.parent), "--", "ovlt", "grpo", "recipe=tiny",
            *_grpo_overrides(Path(data_dir.name), out)]
    res = _submit(cluster, args, 240)
    status, logs = _job_status(cluster, sid)
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
            *_grpo_overrides(data_dir, tmp_path / "fail")]
    res = _submit(cluster, args, 180)
    status, logs = _job_status(cluster, sid)
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
