"""Merging the policy ranks' chunks of the colocated weight sync (workers/ipc_sync.py); the sync
itself runs on a GPU: tests/ovlt_rl/engines/test_vllm_ipc_gpu.py and tests/ovlt_rl/test_grpo_vllm.py."""

import pytest

from ovlt_rl.workers.ipc_sync import merge_chunks


def _chunk(names, uuid):
    return {"names": names, "shapes": [[2]] * len(names), "dtype_names": ["bfloat16"] * len(names),
            "tensor_sizes": [4] * len(names), "handles": {uuid: {"numel": 8}}}


def test_merge_keeps_the_tensors_and_every_ranks_gpu_handle():
    merged = merge_chunks([_chunk(["a", "b"], "GPU-0"), _chunk(["a", "b"], "GPU-1")])
    assert merged["names"] == ["a", "b"] and merged["tensor_sizes"] == [4, 4]
    assert merged["handles"] == {"GPU-0": {"numel": 8}, "GPU-1": {"numel": 8}}


def test_all_ranks_done_is_the_end():
    assert merge_chunks([None, None]) is None


def test_ranks_out_of_step_are_an_error():
    with pytest.raises(RuntimeError, match="different chunks"):
        merge_chunks([_chunk(["a"], "GPU-0"), None])
    with pytest.raises(RuntimeError, match="different chunks"):
        merge_chunks([_chunk(["a"], "GPU-0"), _chunk(["b"], "GPU-1")])
