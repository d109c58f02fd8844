"""How the controller picks the weight-sync path (pure config logic, no workers)."""

import pytest

from ovlt.config import load_config
from ovlt_rl.controller import weight_sync_mode


def _cfg(*overrides):
    return load_config("grpo", ["recipe=tiny", *overrides])


def test_auto_is_nccl_when_policy_and_rollout_have_gpus_of_their_own():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine) == "nccl"


def test_auto_uses_the_object_store_when_they_share_a_gpu():
    cfg = _cfg("actor.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine) == "object_store"


def test_auto_uses_the_object_store_on_cpu():
    assert weight_sync_mode(_cfg(), "cpu", "hf") == "object_store"


def test_explicit_nccl_on_a_shared_gpu_is_an_error_naming_the_settings():
    cfg = _cfg("actor.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5", "rollout.weight_sync=nccl")
    with pytest.raises(ValueError, match="rollout.weight_sync=nccl.*gpus_per_worker"):
        weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine)


def test_explicit_object_store_is_kept_on_gpus():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.weight_sync=object_store")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine) == "object_store"


def test_vllm_uses_nccl_only_when_asked():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=vllm")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine) == "object_store"
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=vllm", "rollout.weight_sync=nccl")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine) == "nccl"


def test_auto_engine_decides_by_the_engine_the_workers_built():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=auto")
    assert weight_sync_mode(cfg, "cuda:0", "hf") == "nccl"  # auto fell back to the transformers engine
    assert weight_sync_mode(cfg, "cuda:0", "vllm") == "object_store"
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=auto", "rollout.weight_sync=nccl")
    assert weight_sync_mode(cfg, "cuda:0", "vllm") == "nccl"  # allowed: was refused as "needs GPUs of their own"
