"""What the loopback-cluster tests share: the Ray instance helper, a socket sampler, a small data set,
the tiny GRPO's overrides and job submission (tests/cluster/test_local_cluster.py, test_two_nodes.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def load_ray_instance():
    spec = importlib.util.spec_from_file_location("ray_instance", REPO / "cluster" / "ray_instance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ray_instance = load_ray_instance()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "localhost") or ip.startswith("::ffff:127.")


class SocketSampler(threading.Thread):
    """Samples the TCP/UDP sockets of one Ray instance's processes (found by its temp dir).

    ray_worker_listener: a node whose address is not 127.0.0.1 (the second loopback node): there
    Ray's own gRPC server in each worker process (hosting our actors too) listens on every
    interface, as on any cluster node. One wildcard port per process is allowed and kept in
    `wildcard_ports`; a second one would be ovlt's (a store, gloo) and counts as bad."""

    def __init__(self, temp_dir: str, every: float = 0.5, ray_worker_listener: bool = False):
        super().__init__(daemon=True)
        self.temp_dir, self.every, self.ray_worker_listener = temp_dir, every, ray_worker_listener
        self.wildcard_ports: dict[int, set[int]] = {}
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
                if ours and self.ray_worker_listener and c.status == "LISTEN":
                    ports = self.wildcard_ports.setdefault(c.pid, set())
                    ports.add(c.laddr.port)
                    ours = len(ports) > 1
                local_ok = not c.laddr or is_loopback(c.laddr.ip) or (wildcard and not ours)
                remote_ok = not c.raddr or is_loopback(c.raddr.ip)
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


def make_data(tmp_path_factory) -> Path:
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


def grpo_overrides(data: Path, out: Path) -> list[str]:
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


def submit(cluster, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "cluster" / "submit.sh"), *args], env=cluster["env"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def job_status(cluster, submission_id: str) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster["dashboard"])
    return str(client.get_job_status(submission_id).value), client.get_job_logs(submission_id)


def loopback_env(cache: Path, dashboard_port: int) -> dict[str, str]:
    """The environment of the cluster scripts and of the jobs (which inherit the head's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "RAY_API_SERVER_ADDRESS")}
    env.update(
        # The job's `python` is this interpreter: jobs inherit the head's environment.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY=str(BIN / "ray"),
        OVLT_LOOPBACK="1",
        OVLT_DASHBOARD=f"http://127.0.0.1:{dashboard_port}",
        OVLT_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
    )
    return env


def head_command(temp_dir: str, dashboard_port: int, cpus: int, gcs_port: int | None = None) -> list[str]:
    """cluster/start_head.sh on free ports (tests run beside other Ray instances)."""
    return [
        str(REPO / "cluster" / "start_head.sh"), "--num-cpus", str(cpus), "--temp-dir", temp_dir,
        "--port", str(gcs_port or free_port()), "--dashboard-port", str(dashboard_port),
        "--dashboard-agent-port", str(free_port()), "--client-port", str(free_port()),
    ]


def stop_node(env: dict[str, str], temp_dir: str) -> None:
    """cluster/stop.sh node --temp-dir, checked: it succeeds and leaves none of the instance's processes."""
    stop = subprocess.run([str(REPO / "cluster" / "stop.sh"), "node", "--temp-dir", temp_dir],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    left = ray_instance.instance_processes(temp_dir)
    if left:  # stop.sh failed: don't leave them running
        ray_instance.stop_instance(temp_dir, grace=3)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped" in stop.stdout
    assert not left, f"processes of the Ray instance left after cluster/stop.sh: {[p.pid for p in left]}"
