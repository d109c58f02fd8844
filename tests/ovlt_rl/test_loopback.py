"""Local runs keep Ray, gloo and HTTP on loopback; cluster runs are left alone."""

import os

from ovlt_rl import loopback


def test_local_run_sets_loopback_env(monkeypatch):
    for k in loopback.LOOPBACK_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("OVLT_ALLOW_NETWORK", raising=False)
    loopback.apply(["recipe=tiny"])
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"
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
