"""The colocated weight sync on one GPU: a vLLM engine that sleeps beside the policy takes new
weights through CUDA IPC (the policy side's `weight_chunks`, packed on the GPU; vLLM's engine core
in its own process opens the buffer) and then generates what transformers generates with them.

The engine sleeps at level 2 here (weights dropped, the harder case: every weight must come back
through the sync); the GRPO test (tests/ovlt_rl/test_grpo_vllm.py) runs the default level 1."""

from __future__ import annotations

import gc

import pytest
import torch

from ovlt_rl.engines.base import SamplingParams
from tests.ovlt_rl.engines.vllm_checks import engine_config, max_diff, perturbed

pytestmark = [pytest.mark.vllm, pytest.mark.gpu(n=1)]


@pytest.fixture(scope="module")
def model_path():
    from ovlt_rl.models.loading import resolve_model_path

    return resolve_model_path("tiny-pretrained")


@pytest.fixture(scope="module")
def items(model_path, image_row, tmp_path_factory):
    from ovlt_rl.data.dataset import PromptDataset
    from ovlt_rl.data.schema import write_rows
    from ovlt_rl.models.loading import load_processor

    rows = [image_row(k) for k in (1, 2, 3)]
    ds = PromptDataset(write_rows(rows, tmp_path_factory.mktemp("ipc") / "rows.parquet"), load_processor(model_path), max_prompt_length=256)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def engine(model_path):
    from ovlt_rl.engines.vllm_engine import VLLMEngine

    # gpus_per_worker < 1: shares the GPU with a policy (sleep mode, CUDA IPC sync)
    cfg = engine_config(gpu_memory_utilization=0.2, gpus_per_worker=0.5, vllm_sleep_level=2)
    eng = VLLMEngine(cfg, model_path)  # the engine core in its own process (vLLM's default), as in production
    yield eng
    eng.llm.llm_engine.engine_core.shutdown()
    del eng
    gc.collect()


def test_ipc_sync_into_a_sleeping_engine_then_generation_follows_the_new_weights(engine, items, model_path):
    from ovlt_rl.engines.hf import HFEngine
    from ovlt_rl.models.loading import load_model
    from ovlt_rl.workers.ipc_sync import weight_chunks

    assert engine.sleep_mode and engine.ipc
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
    tokens = lambda groups: [g[0].token_ids for g in groups]  # noqa: E731
    before = tokens(engine.generate(items, greedy))

    free0 = torch.cuda.mem_get_info()[0]
    engine.sleep()
    assert torch.cuda.mem_get_info()[0] > free0  # the KV cache and the weights left the GPU
    with pytest.raises(RuntimeError, match="level-2 sleep dropped the weights"):
        engine.generate(items, greedy)

    dev = torch.device("cuda", 0)
    policy = load_model(model_path, dtype=torch.float32)
    policy.load_state_dict(perturbed(policy.state_dict(), seed=2))
    policy.to(dev)
    engine.start_ipc_update()
    n_chunks = 0
    # 64 KiB chunks: q/k/v and gate/up of one layer arrive in different chunks (vLLM's layer-wise reload joins them)
    for chunk in weight_chunks(policy, torch.float32, dev, bucket_bytes=64 << 10):
        assert list(chunk["handles"]) == [str(torch.cuda.get_device_properties(dev).uuid)]
        assert engine.ipc_update(chunk) == len(chunk["names"])
        n_chunks += 1
    engine.finish_ipc_update()
    assert n_chunks > 5

    ref = HFEngine(model_path, device=dev, model=policy, fast_decode="off")  # the weights just sent
    expected = tokens(ref.generate(items, greedy))
    after = tokens(engine.generate(items, greedy))
    assert after != before
    assert after == expected
    # TF32 matmuls on both sides: the same bound as the CPU-vs-GPU fp32 comparisons (test_vllm_real.py)
    assert max_diff(engine.compute_logprobs(items, expected), ref.compute_logprobs(items, expected)) < 3e-2
