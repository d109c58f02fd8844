"""Window attention for the Qwen2.5-VL vision tower: all windows of a layer in one or a few
kernel calls, for training (policy workers, for the whole run) and the rollout engines.

Why: without flash-attn, transformers runs the vision tower's attention one window at a time (a
Python loop of SDPA calls over `cu_seqlens`): a 504x504 image has 25 windows, so one GRPO update
of 16 such samples on an 8-layer tower made 4,864 attention calls forward and 2,432 backward
(~47 us of CPU each against ~7 us of GPU work), and a rollout prefill of 128 images ~90k: launch
overhead, not compute. Two ways to batch them, picked per call:

- on CUDA in bf16/fp16 where torch's `varlen_attn` works: ONE non-causal varlen flash attention
  call over all windows of the layer (`cu_seqlens` as given, the longest window from them);
- otherwise (CPU, fp32, no varlen_attn): windows of one length are independent attention problems
  of the same shape, so all windows of each length are gathered into one batch and run in one SDPA
  call per distinct length (a handful per layer). Autograd goes through the gather and scatter.

How it plugs in: transformers passes `cu_seqlens` only to attention functions whose registered
name contains "flash" (it checks the name), so ours is registered under `NAME` (which does).
`use_window_attention(model)` switches the vision config to it for good (the policy workers: the
tower always attends within windows, whatever the text attention); `grouped_vision_attention(model)`
does it for the duration of a block and restores the previous implementation after (the fast
decode path's prefill). The text model's attention is not touched.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ovlt_rl.models.varlen import varlen_attention, varlen_usable

NAME = "ovlt_grouped_flash_compatible"


def grouped_window_attention(module, query, key, value, attention_mask=None, *, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, is_causal=False, **kwargs):
    """Attention within each segment of `cu_seq_lens_q`; query/key/value [1, heads, total, head_dim].

    Returns ([1, total, heads, head_dim], None), the layout of transformers' flash-attention functions.
    """
    if cu_seq_lens_q is None or (
        cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q and not torch.equal(cu_seq_lens_q, cu_seq_lens_k)
    ):
        raise ValueError(f"{NAME}: needs the same cu_seq_lens for queries and keys (vision tower self-attention)")
    if attention_mask is not None or is_causal or dropout:
        raise ValueError(f"{NAME}: supports only unmasked, non-causal attention without dropout")
    if query.is_cuda:  # varlen_attention answers None on CPU anyway; this skips the max-length lookup there
        max_len = int(max_length_q) if max_length_q is not None else _longest(cu_seq_lens_q)
        out = varlen_attention(query, key, value, cu_seq_lens_q, max_len, scaling, causal=False)
        if out is not None:
            return out, None
    return _grouped_sdpa(query[0], key[0], value[0], cu_seq_lens_q, scaling).unsqueeze(0), None


@functools.lru_cache(maxsize=8)
def _longest(cu: torch.Tensor) -> int:
    """The longest segment of `cu`. Cached by tensor identity: the tower passes the same tensor to
    every windowed layer (and checkpointing replays them), so the host sync happens once per forward."""
    return int((cu[1:] - cu[:-1]).max())


def _grouped_sdpa(q, k, v, cu, scaling):
    """q/k/v [heads, total, head_dim] -> [total, heads, head_dim]: one SDPA per distinct segment length."""
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    out = torch.empty_like(q)
    for length in lengths.unique().tolist():  # one host sync per layer
        if length == 0:
            continue
        idx = starts[lengths == length][:, None] + torch.arange(length, device=q.device)  # [windows, length]
        # [heads, windows, length, dim] -> [windows, heads, length, dim]: windows become the batch.
        o = F.scaled_dot_product_attention(q[:, idx].transpose(0, 1), k[:, idx].transpose(0, 1),
                                           v[:, idx].transpose(0, 1), scale=scaling)
        out[:, idx] = o.transpose(0, 1)
    return out.transpose(0, 1)


def kernel_for(device_type: str, dtype: torch.dtype) -> str:
    """Which kernel the vision tower's windows get on this device and dtype (for logs; probes varlen once)."""
    if varlen_usable(device_type, dtype, causal=False):
        return "torch varlen flash attention, one call per layer"
    return "SDPA, one call per window length"


def register() -> None:
    """Make `NAME` known to transformers; idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, grouped_window_attention)


def use_window_attention(model: torch.nn.Module) -> None:
    """Switch a Qwen2.5-VL model's vision tower to `grouped_window_attention` for good.

    The vision config's implementation is set directly (transformers' vision attention reads it at
    each call), as `grouped_vision_attention` does, rather than through `set_attn_implementation`,
    whose checks of names have changed between transformers versions.
    """
    register()
    model.model.visual.config._attn_implementation = NAME


@contextlib.contextmanager
def grouped_vision_attention(model):
    """Within the block, `model`'s vision tower attends with `grouped_window_attention`."""
    register()
    config = model.model.visual.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
