"""The CUDA IPC handle as plain values (engines/cuda_ipc.py): what it accepts, what it rebuilds.
Opening a handle needs two processes on one GPU: tests/ovlt_rl/engines/test_vllm_ipc_gpu.py."""

import pytest
import torch

from ovlt_rl.engines.cuda_ipc import FIELDS, describe, rebuild_args


def _args(cls=torch.Tensor, size=(64,), stride=(1,), offset=0, dtype=torch.uint8, event=b"\x02" * 64):
    """reduce_tensor's argument tuple for a CUDA tensor, as torch lays it out (without a GPU)."""
    return (cls, torch.Size(size), stride, offset, torch.storage.TypedStorage, dtype, 0, b"\x01" * 64, 4096, 512,
            False, b"ref", 3, event, True)


def test_describe_keeps_plain_values_and_rebuild_restores_torchs_tuple():
    d = describe(_args())
    assert set(d) == set(FIELDS)
    assert all(isinstance(v, (bytes, int, bool)) for v in d.values())  # what msgpack carries without pickle
    args = rebuild_args(d, device_index=3)
    assert args[0] is torch.Tensor and args[4] is torch.storage.TypedStorage and args[5] == torch.uint8
    assert args[1] == torch.Size([64]) and args[2] == (1,) and args[3] == 0
    assert args[6] == 3  # opened on the receiver's index of the GPU
    assert args[7:] == (b"\x01" * 64, 4096, 512, False, b"ref", 3, b"\x02" * 64, True)
    assert rebuild_args(describe(_args(event=None)), 0)[13] is None


@pytest.mark.parametrize("bad", [dict(dtype=torch.float32), dict(size=(8, 8)), dict(offset=4), dict(stride=(2,)),
                                 dict(cls=torch.nn.Parameter)])
def test_describe_refuses_anything_but_a_flat_uint8_buffer(bad):
    with pytest.raises(ValueError, match="1-D uint8"):
        describe(_args(**bad))


def test_rebuild_refuses_malformed_handles():
    d = describe(_args())
    with pytest.raises(ValueError, match="fields"):
        rebuild_args({**d, "extra": 1}, 0)
    with pytest.raises(ValueError, match="fields"):
        rebuild_args({k: v for k, v in d.items() if k != "numel"}, 0)
    with pytest.raises(ValueError, match="malformed"):
        rebuild_args({**d, "storage_handle": "text"}, 0)
    with pytest.raises(ValueError, match="malformed"):
        rebuild_args({**d, "numel": 0}, 0)
