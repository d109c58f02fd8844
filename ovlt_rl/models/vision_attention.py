"""Window attention for the Qwen2.5-VL vision tower: all windows of a layer in one or a few
kernel calls, for training (policy workers, for the whole run) and the rollout engines.

Why: transformers' vision attention runs SDPA one window at a time (a Python loop over
`cu_seqlens`) unless the attention implementation is a flash-attention one: a 504x504 image has
25 windows, so one GRPO update of 16 such samples on an 8-layer tower made 4,864 attention calls
forward and 2,432 backward (~47 us of CPU each against ~7 us of GPU work), and a rollout prefill
of 128 images ~90k: launch overhead, not compute. Two ways to batch them, picked per call:

- on CUDA in bf16/fp16 where torch's `varlen_attn` works: ONE non-causal varlen flash attention
  call over all windows of the layer (`cu_seqlens` as given, the longest window from them);
- otherwise (CPU, fp32, no varlen_attn): windows of one length are independent attention problems
  of the same shape, so all windows of each length are gathered into one batch and run in one SDPA
  call per distinct length (a handful per layer). Autograd goes through the gather and scatter.

How it plugs in: by composition, per module. `use_window_attention(model)` gives each vision
attention module of the tower the forward `window_attention_forward` (an instance attribute:
the module's class, its weights, its state-dict names and its config are untouched; transformers
5.17 to 5.25 share the module layout it reads: `qkv`, `proj`, `num_heads`, `scaling`, and their
own `apply_rotary_pos_emb_vision`). It does not go through transformers' attention registry on
purpose: the tower passes `cu_seqlens` only to implementations whose NAME contains "flash", and
from 5.25 on such a name is also taken for a flash-attention kernel to import (ovlt 0.1 broke on
that). `use_stock_attention(model)` removes it; `grouped_vision_attention(model)` applies it for
the duration of a block (the fast decode path's prefill). The text model's attention is untouched.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types

import torch
import torch.nn.functional as F

from ovlt_rl.models.varlen import varlen_attention, varlen_usable

_MARK = "_ovlt_window_attention"
"""Set on a module whose forward is `window_attention_forward`."""


def grouped_window_attention(query, key, value, cu_seqlens, scaling, max_len=None):
    """Attention within each segment of `cu_seqlens`; query/key/value [1, heads, total, head_dim].

    Returns [1, total, heads, head_dim] (the layout of transformers' attention functions).
    """
    if query.is_cuda:  # varlen_attention answers None on CPU anyway; this skips the max-length lookup there
        out = varlen_attention(query, key, value, cu_seqlens, max_len or _longest(cu_seqlens), scaling, causal=False)
        if out is not None:
            return out
    return _grouped_sdpa(query[0], key[0], value[0], cu_seqlens, scaling).unsqueeze(0)


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


def window_attention_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """The forward of transformers' Qwen2.5-VL vision attention (qkv, rotary embedding, attention
    within the windows of `cu_seqlens`, projection) with the windows batched. Bound to a module by
    `use_window_attention`; the rotary function is the model's own."""
    if position_embeddings is None:
        raise ValueError("window attention needs the rotary position embeddings (transformers >= 5 passes them)")
    seq_length = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = _rotary_of(self)(q, k, cos, sin)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, total, head_dim]
    out = grouped_window_attention(q, k, v, cu_seqlens, self.scaling, max_seqlen)
    return self.proj(out.reshape(seq_length, -1).contiguous())


def _rotary_of(module):
    """`apply_rotary_pos_emb_vision` of the transformers module that defines `module`'s class."""
    fn = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb_vision", None)
    if fn is None:
        raise TypeError(f"{type(module).__name__}: its transformers module has no apply_rotary_pos_emb_vision")
    return fn


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The vision tower's attention modules; a clear error for a tower of another layout."""
    visual = model.model.visual
    mods = [block.attn for block in visual.blocks]
    for m in mods:
        missing = [a for a in ("qkv", "proj", "num_heads", "scaling") if not hasattr(m, a)]
        if missing:
            raise TypeError(f"{type(m).__name__} has no {missing}: ovlt's window attention fits Qwen2.5-VL's vision tower")
        _rotary_of(m)
    return mods


def use_window_attention(model: torch.nn.Module) -> None:
    """Give the vision tower of a Qwen2.5-VL model the batched window attention, for good."""
    for m in _attention_modules(model):
        m.forward = types.MethodType(window_attention_forward, m)
        setattr(m, _MARK, True)


def use_stock_attention(model: torch.nn.Module) -> None:
    """Back to transformers' own vision attention (undoes `use_window_attention`)."""
    for m in _attention_modules(model):
        if getattr(m, _MARK, False):
            del m.forward  # the class's forward shows through again
            delattr(m, _MARK)


def uses_window_attention(model: torch.nn.Module) -> bool:
    """True when every vision attention module of `model` runs `window_attention_forward`."""
    return all(getattr(m, _MARK, False) for m in _attention_modules(model))


@contextlib.contextmanager
def grouped_vision_attention(model):
    """Within the block, `model`'s vision tower attends with the batched window attention."""
    already = uses_window_attention(model)
    use_window_attention(model)
    try:
        yield
    finally:
        if not already:
            use_stock_attention(model)
