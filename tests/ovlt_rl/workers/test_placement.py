"""Placement decisions, rank numbering, the hybrid mesh's node layout, gloo's interface and the
shared-storage marker, without a cluster (the two-node run is tests/cluster/test_two_nodes.py)."""

from __future__ import annotations

import pytest

from ovlt.config import load_config
from ovlt_rl.config import ConfigError
from ovlt_rl.workers.mesh import node_layout
from ovlt_rl.workers.network import choose_gloo_interface, interface_of
from ovlt_rl.workers.placement import bundle, rank_order, strategy
from ovlt_rl.workers.shared_storage import rank_check


def test_packs_when_one_node_holds_the_group_and_spreads_when_none_does():
    one = bundle(1, {})
    eight = {"CPU": 64, "GPU": 8}
    assert strategy(8, one, [eight, eight]) == "STRICT_PACK"
    assert strategy(16, one, [eight, eight]) == "PACK"
    # A custom resource one unit per node forces one rank per node, whatever the CPUs.
    slot = bundle(0, {"policy_slot": 1})
    assert slot == {"CPU": 1.0, "policy_slot": 1.0}
    assert strategy(2, slot, [{"CPU": 8, "policy_slot": 1}, {"CPU": 8, "policy_slot": 1}]) == "PACK"
    assert strategy(2, slot, [{"CPU": 8}, {"CPU": 8, "policy_slot": 2}]) == "STRICT_PACK"


def test_ranks_are_numbered_node_by_node():
    # Ray put bundles 0 and 2 on node a, 1 and 3 on node b.
    assert rank_order({0: "a", 1: "b", 2: "a", 3: "b"}) == [0, 2, 1, 3]
    assert rank_order({0: "b", 1: "a", 2: "a"}) == [0, 1, 2]


def test_hybrid_layout_needs_equal_contiguous_nodes():
    assert node_layout(["a", "a", "b", "b"]) == (2, 2)
    assert node_layout(["a", "b"]) == (2, 1)
    with pytest.raises(RuntimeError, match="same number of policy ranks on every node"):
        node_layout(["a", "a", "b"])
    with pytest.raises(RuntimeError, match="not contiguous"):
        node_layout(["a", "b", "a", "b"])


def test_gloo_uses_the_interface_of_the_node_address(monkeypatch):
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("203.0.113.9") is None
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert choose_gloo_interface("127.0.0.1") == "lo"
    import os

    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "ib7")
    with pytest.raises(RuntimeError, match="GLOO_SOCKET_IFNAME=ib7 .* has no interface ib7"):
        choose_gloo_interface("127.0.0.1")


def test_config_checks_sharding_and_resources():
    cfg = load_config("grpo", ["recipe=tiny", "actor.sharding=hybrid", "actor.resources_per_worker.slot=1"])
    assert cfg.actor.sharding == "hybrid" and cfg.actor.resources_per_worker == {"slot": 1}
    with pytest.raises(ConfigError, match="actor.sharding: unknown 'zero3'"):
        load_config("grpo", ["recipe=tiny", "actor.sharding=zero3"])
    with pytest.raises(ConfigError, match="actor.resources_per_worker"):
        load_config("grpo", ["recipe=tiny", "actor.resources_per_worker.GPU=1"])
    with pytest.raises(ConfigError, match="actor.resources_per_worker"):
        load_config("grpo", ["recipe=tiny", "actor.resources_per_worker.slot=many"])


def test_rank_marker_check(tmp_path):
    d = tmp_path / "check"
    d.mkdir()
    (d / "driver").write_text("tok")
    assert rank_check(str(d), "tok", 3, wait_s=0) is None
    assert (d / "rank-3").read_text() == "tok"
    assert "reads another marker" in rank_check(str(d), "other", 3, wait_s=0)
    missing = rank_check(str(tmp_path / "elsewhere"), "tok", 1, wait_s=0.3)
    assert "does not see the marker" in missing and "elsewhere" in missing


def test_a_worker_outside_ray_asks_ray_nothing():
    import socket

    import ray

    from ovlt_rl.workers.network import this_node

    assert not ray.is_initialized()
    assert this_node("127.0.0.1") == ("127.0.0.1", socket.gethostname())
    assert not ray.is_initialized()  # asking Ray's runtime context would have started a local Ray
