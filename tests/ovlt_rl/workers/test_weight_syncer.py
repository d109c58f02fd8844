"""How the weight syncer picks its mode (pure config logic, no workers)."""

import pytest

from ovlt.config import load_config
from ovlt_rl.workers.weight_syncer import weight_sync_mode


def _cfg(*overrides):
    return load_config("grpo", ["recipe=tiny", *overrides])


def test_auto_is_nccl_when_policy_and_rollout_have_gpus_of_their_own():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine, can_ipc=False) == "nccl"


def test_auto_uses_the_object_store_when_they_share_a_gpu():
    cfg = _cfg("actor.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine, can_ipc=False) == "object_store"


def test_auto_uses_the_object_store_on_cpu():
    assert weight_sync_mode(_cfg(), "cpu", "hf", can_ipc=False) == "object_store"


def test_explicit_nccl_on_a_shared_gpu_is_an_error_naming_the_settings():
    cfg = _cfg("actor.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5", "rollout.weight_sync=nccl")
    with pytest.raises(ValueError, match="rollout.weight_sync=nccl.*gpus_per_worker"):
        weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine, can_ipc=False)


def test_explicit_object_store_is_kept_on_gpus():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.weight_sync=object_store")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine, can_ipc=False) == "object_store"


def test_vllm_uses_nccl_only_when_asked():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=vllm")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine, can_ipc=False) == "object_store"
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=vllm", "rollout.weight_sync=nccl")
    assert weight_sync_mode(cfg, "cuda:0", cfg.rollout.engine, can_ipc=False) == "nccl"


def test_auto_engine_decides_by_the_engine_the_workers_built():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=auto")
    assert weight_sync_mode(cfg, "cuda:0", "hf", can_ipc=False) == "nccl"  # auto fell back to the transformers engine
    assert weight_sync_mode(cfg, "cuda:0", "vllm", can_ipc=False) == "object_store"
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=auto", "rollout.weight_sync=nccl")
    assert weight_sync_mode(cfg, "cuda:0", "vllm", can_ipc=False) == "nccl"  # allowed: was refused as "needs GPUs of their own"


def test_auto_hands_a_colocated_vllm_the_weights_through_cuda_ipc():
    cfg = _cfg("actor.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5", "rollout.engine=vllm")
    assert weight_sync_mode(cfg, "cuda:0", "vllm", can_ipc=True) == "ipc"
    # a vLLM without weight_transfer_config, or the hf engine, on a shared GPU: the object store
    assert weight_sync_mode(cfg, "cuda:0", "vllm", can_ipc=False) == "object_store"
    assert weight_sync_mode(cfg, "cpu", "vllm", can_ipc=False) == "object_store"


def test_explicit_ipc_without_a_colocated_vllm_is_an_error_naming_the_settings():
    cfg = _cfg("actor.gpus_per_worker=1", "rollout.gpus_per_worker=1", "rollout.engine=vllm", "rollout.weight_sync=ipc")
    with pytest.raises(ValueError, match="rollout.weight_sync=ipc needs rollout.engine=vllm sharing the policy's GPU"):
        weight_sync_mode(cfg, "cuda:0", "vllm", can_ipc=False)
    with pytest.raises(ValueError, match="rollout.weight_sync=ipc"):
        weight_sync_mode(_cfg("rollout.weight_sync=ipc"), "cpu", "hf", can_ipc=False)
