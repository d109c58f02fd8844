"""Batched windowed attention for the Qwen2.5-VL vision tower, for the fast path's prefill.

Why: without flash-attn, transformers runs the vision tower's attention one window at a time (a
Python loop of SDPA calls over `cu_seqlens`): a 504x504 image has 25 windows, so a prefill of 128
such images makes ~90k small attention calls, seconds of launch overhead. Windows of one length
are independent attention problems of the same shape, so this function gathers all windows of
each length into one batch and runs one SDPA call per distinct length (a handful per layer).

How it plugs in: transformers passes `cu_seqlens` only to attention functions whose registered
name contains "flash" (it checks the name), so ours is registered under `NAME` (which does) and
`grouped_vision_attention(model)` switches the vision config to it for the duration of a block,
restoring the previous implementation after. The text model's attention is not touched.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

NAME = "ovlt_grouped_flash_compatible"


def grouped_window_attention(module, query, key, value, attention_mask=None, *, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, cu_seq_lens_k=None, is_causal=False, **kwargs):
    """Attention within each segment of `cu_seq_lens_q`; query/key/value [1, heads, total, head_dim].

    Returns ([1, total, heads, head_dim], None), the layout of transformers' flash-attention functions.
    """
    if cu_seq_lens_q is None or (cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_q, cu_seq_lens_k)):
        raise ValueError(f"{NAME}: needs the same cu_seq_lens for queries and keys (vision tower self-attention)")
    if attention_mask is not None or is_causal or dropout:
        raise ValueError(f"{NAME}: supports only unmasked, non-causal attention without dropout")
    q, k, v = query[0], key[0], value[0]  # [heads, total, head_dim]
    starts, lengths = cu_seq_lens_q[:-1], cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]
    out = torch.empty_like(q)
    for length in lengths.unique().tolist():  # one host sync per layer
        if length == 0:
            continue
        idx = starts[lengths == length][:, None] + torch.arange(length, device=q.device)  # [windows, length]
        # [heads, windows, length, dim] -> [windows, heads, length, dim]: windows become the batch.
        o = F.scaled_dot_product_attention(q[:, idx].transpose(0, 1), k[:, idx].transpose(0, 1),
                                           v[:, idx].transpose(0, 1), scale=scaling)
        out[:, idx] = o.transpose(0, 1)
    return out.transpose(0, 1).unsqueeze(0), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, grouped_window_attention)


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
