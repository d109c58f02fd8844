"""actor.offload_optimizer on a GPU: after an update the policy worker moves Adam's state to host
memory (the GPU memory it held is freed), the next update brings it back to the GPU, a checkpoint
leaves it in host memory, and the weights follow exactly the trajectory of a worker that never
moved it."""

import pytest
import torch

from tests.ovlt_rl.workers.test_policy import _samples, _worker
from ovlt_rl.models.loading import load_processor, resolve_model_path


def _devices(w):
    return {v.device.type for s in w.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0}


@pytest.mark.gpu(n=1)
def test_offloaded_adam_state_frees_gpu_memory_and_updates_as_without(tmp_path):
    path = resolve_model_path("tiny")
    samples = _samples(load_processor(path), n=4)
    runs = {}
    for offload in (False, True):
        w = _worker(path, **{"trainer.device": "cuda", "model.dtype": "bf16", "actor.offload_optimizer": str(offload).lower(),
                             "actor.global_batch_size": "4", "actor.micro_batch_size": "2",
                             # deterministic kernels, so that the two workers can be compared bit for bit
                             "model.attn_implementation": "eager", "actor.padding_free": "false"})
        for step in range(3):
            w.update_policy(samples, denominator=float(sum(s["loss_mask"].sum() for s in samples)), temperature=1.0)
            if offload:
                assert _devices(w) == {"cuda"}  # the update brought the state back
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                moved = w.offload_optimizer()
                torch.cuda.synchronize()
                assert moved > 0 and _devices(w) == {"cpu"}
                assert before - torch.cuda.memory_allocated() >= 0.9 * moved  # the GPU copies are gone
        if offload:  # a checkpoint saves the state from the GPU and leaves it offloaded
            w.save_checkpoint(str(tmp_path / "ck"))
            assert _devices(w) == {"cpu"}
        runs[offload] = {k: v.float().cpu() for k, v in w.full_state_dict().items()}
        w.shutdown()
    assert runs[True].keys() == runs[False].keys()
    for k in runs[False]:
        assert torch.equal(runs[True][k], runs[False][k]), k
