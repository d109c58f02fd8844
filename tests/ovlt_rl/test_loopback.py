"""Local runs keep Ray, gloo, torch.distributed and HTTP on loopback; cluster runs are left alone."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from ovlt_rl import loopback

REPO = Path(__file__).resolve().parents[2]


def test_local_run_sets_loopback_env(monkeypatch):
    for k in loopback.LOOPBACK_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("OVLT_ALLOW_NETWORK", raising=False)
    loopback.apply(["recipe=tiny"])
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"
    assert os.environ["https_proxy"].startswith("http://127.0.0.1:")


def test_cluster_run_is_left_alone(monkeypatch):
    for k in loopback.LOOPBACK_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    loopback.apply([])
    assert "GLOO_SOCKET_IFNAME" not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    assert loopback.is_cluster_run(["trainer.ray_address=auto"])
    assert not loopback.is_cluster_run(["trainer.ray_address="])


def test_allow_network_keeps_http(monkeypatch):
    for k in loopback.LOOPBACK_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("OVLT_ALLOW_NETWORK", "1")
    loopback.apply([])
    assert "https_proxy" not in os.environ and os.environ["GLOO_SOCKET_IFNAME"] == "lo"


# -- a real local run: every socket of every process it starts stays on loopback ----------------

def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1" or ip.startswith("::ffff:127.")


class _SocketSampler(threading.Thread):
    """Samples the inet sockets (TCP and UDP) of a process and all its descendants: the `ovlt`
    driver, and the Ray daemons, actors and reward workers it starts (they are its descendants)."""

    def __init__(self, root_pid: int, every: float = 0.3):
        super().__init__(daemon=True)
        self.root, self.every = psutil.Process(root_pid), every
        self.stop_event = threading.Event()
        self.bad: set[tuple] = set()
        self.listening: dict[str, set[int]] = {}  # process name -> loopback ports it listened on
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                procs = {p.pid: p for p in [self.root, *self.root.children(recursive=True)]}
            except psutil.NoSuchProcess:
                return
            names = {}
            for pid, p in procs.items():
                try:
                    names[pid] = f"{p.name()}: {' '.join(p.cmdline())[:60]}"
                except psutil.Error:
                    names[pid] = "?"
            for c in psutil.net_connections(kind="inet"):
                if c.pid not in procs or not c.laddr:
                    continue
                # A listening (or unconnected UDP) socket on a wildcard address is reachable from
                # the network; any socket with a non-loopback end is traffic off the machine.
                if not _is_loopback(c.laddr.ip) or (c.raddr and not _is_loopback(c.raddr.ip)):
                    self.bad.add((names[c.pid], tuple(c.laddr), tuple(c.raddr) if c.raddr else (), c.status))
                elif c.status == psutil.CONN_LISTEN:
                    self.listening.setdefault(names[c.pid], set()).add(c.laddr.port)
            self.samples += 1
            self.stop_event.wait(self.every)


@pytest.mark.slow
def test_local_grpo_run_listens_and_talks_only_on_loopback(tmp_path, image_row, write_parquet):
    """`ovlt grpo` with 2 FSDP ranks, a rollout worker and a reward worker, sampled every 0.3 s:
    every socket of the driver and of every process it starts (Ray's daemons, agents and workers
    included) is bound to and talks to 127.0.0.1 only; the torch.distributed rendezvous store of
    policy rank 0 listened on every interface before (torch's default TCPStore server)."""
    data = write_parquet([image_row(k % 3 + 1) for k in range(8)], "rl.parquet")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OVLT_ALLOW_NETWORK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "ovlt.cli", "grpo", "recipe=tiny", "model.path=tiny", "data.prepare_recipe=''",
           f"data.train_files=[{data}]", "data.val_files=[]", "data.rollout_batch_size=4", "rollout.n=4",
           "actor.num_workers=2", "actor.global_batch_size=16", "actor.micro_batch_size=8",
           "data.max_response_length=16", "trainer.total_steps=2", "trainer.val_before_train=false",
           "trainer.save_every=0", "trainer.loggers=[jsonl]", f"trainer.output_dir={out}", "trainer.ray_num_cpus=4"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = _SocketSampler(proc.pid)
    sampler.start()
    try:
        log, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
        sampler.stop_event.set()
        sampler.join(timeout=10)
    assert proc.returncode == 0, log[-4000:]
    assert (out / "metrics.jsonl").read_text().count('"step"') == 2
    assert sampler.samples >= 10
    seen = " ".join(sampler.listening)
    # The sampler saw the listening sockets of Ray's daemons and of the workers.
    assert "gcs_server" in seen and "raylet" in seen and "ray::PolicyWorker" in seen, sampler.listening
    assert not sampler.bad, "sockets off loopback:\n" + "\n".join(map(str, sorted(sampler.bad)))
