"""Attention for packed rows (several samples in one row, no padding), as a transformers
attention implementation named "ovlt_packed".

transformers 5 passes the text position ids to every attention call; in a packed row they restart
at each sample (see `ovlt_rl.workers.packing`). This function finds the sample boundaries there
(the rule transformers' own `find_packed_sequence_indices` uses: a new sample wherever the position
does not grow by one) and attends within each sample, causally:

- on CUDA in bf16/fp16: one call of torch's variable-length flash attention
  (`torch.nn.attention.varlen.varlen_attn`) over the whole row, no mask, no padding;
- otherwise (CPU, fp32, or a torch without varlen_attn): transformers' SDPA on each sample in turn.

Calls without packed position ids (an attention mask given, or no text positions) go to
transformers' SDPA unchanged, so a model set to "ovlt_packed" still runs padded batches exactly
as "sdpa" does. `use_packed_attention(model)` switches a Qwen2.5-VL model's text decoder to it;
the vision tower keeps its own attention (it already runs per image).
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch

NAME = "ovlt_packed"
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def segments(text_positions: torch.Tensor) -> tuple[torch.Tensor, list[int], int]:
    """(cu_seqlens int32 [N+1] on the device, the same as a list, longest length) of a packed row.

    Cached by tensor identity: transformers passes the same position tensor to every layer (and
    checkpointing replays it), so the device-to-host copy happens once per forward, not per layer.
    """
    if text_positions.dim() != 2 or text_positions.shape[0] != 1:
        raise ValueError(f"packed attention needs text positions of shape [1, T], got {tuple(text_positions.shape)}")
    pos = text_positions[0]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] - pos[:-1] != 1
    bounds = torch.cat([starts.nonzero().flatten(), pos.new_tensor([pos.numel()])]).tolist()
    cu = torch.tensor(bounds, dtype=torch.int32, device=pos.device)
    return cu, bounds, max(b - a for a, b in zip(bounds[:-1], bounds[1:]))


@functools.lru_cache(maxsize=1)
def _varlen():
    """(varlen_attn, its parameter names) or None when this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


@functools.lru_cache(maxsize=8)
def _varlen_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Run the kernel once, forward and backward, on a tiny GQA input: a torch whose varlen op
    lacks a backward (or this GPU) then gets the per-sample path with a warning, not a crash."""
    try:
        q = torch.randn(5, 4, 64, device=device, dtype=dtype, requires_grad=True)
        kv = torch.randn(5, 2, 64, device=device, dtype=dtype, requires_grad=True)
        cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
        with torch.enable_grad():
            out = _call_varlen(q, kv, kv, cu, 3, 64**-0.5)
            out.float().sum().backward()
        return bool(torch.isfinite(q.grad).all())
    except Exception as e:  # noqa: BLE001 - any failure means: don't use it
        log.warning("torch varlen flash attention unusable here (%s); packed rows use SDPA per sample", e)
        return False


def kernel_for(device_type: str, dtype: torch.dtype) -> str:
    """Which attention packed rows get on this device and dtype (for logs and benchmark records)."""
    usable = device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _varlen() is not None
    if usable and _varlen_works(torch.device("cuda", torch.cuda.current_device()), dtype):
        return "torch varlen flash attention"
    return "SDPA per sample"


def _call_varlen(q, k, v, cu, max_len, scaling):
    """varlen_attn on [T, heads, D] tensors, causal, across torch's two API versions."""
    fn, params = _varlen()
    kw = {}
    if "scale" in params:
        kw["scale"] = scaling
    if "window_size" in params:  # torch >= 2.12: causal is window (-1, 0)
        kw["window_size"] = (-1, 0)
    else:  # torch 2.9-2.11: an is_causal flag
        kw["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:  # older API: give every query head its key/value head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return fn(q, k, v, cu, cu, max_len, max_len, **kw)


def _flash_varlen(query, key, value, cu, max_len, scaling):
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> [1, T, H, D], or None if unsupported here."""
    found = _varlen()
    if found is None or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return None
    head_dim = query.shape[-1]
    scaling = head_dim**-0.5 if scaling is None else scaling
    if abs(scaling - head_dim**-0.5) > 1e-6 * head_dim**-0.5 and "scale" not in found[1]:
        return None  # an old varlen_attn without `scale` uses 1/sqrt(D) only
    if not _varlen_works(query.device, query.dtype):
        return None
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, heads, D]
    return _call_varlen(q, k, v, cu, max_len, scaling)[None]


def packed_attention(module, query, key, value, attention_mask, position_ids=None, dropout=0.0, scaling=None, **kwargs):
    """transformers attention interface: (module, q, k, v, mask, ...) -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if position_ids is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("ovlt_packed attention has no dropout (Qwen2.5-VL trains with attention_dropout 0)")
    cu, bounds, max_len = segments(position_ids)
    out = _flash_varlen(query, key, value, cu, max_len, scaling)
    if out is not None:
        return out, None
    pieces = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, scaling=scaling)[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces, dim=1), None


def register() -> None:
    """Make "ovlt_packed" known to transformers (attention and mask builders); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask, sdpa_mask

    def mask(*args, attention_mask=None, **kwargs):
        # Packed rows (no padding mask): no mask at all, like flash attention; the boundaries come
        # from the position ids. Padded batches: exactly the mask SDPA would get.
        if attention_mask is None:
            return flash_attention_mask(*args, attention_mask=None, **kwargs)
        return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, mask)


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a Qwen2.5-VL model's text decoder to "ovlt_packed" (vision tower unchanged)."""
    register()
    model.set_attn_implementation({"text_config": NAME})
    got = model.config.get_text_config()._attn_implementation
    if got != NAME:
        raise RuntimeError(f"could not set the text attention to {NAME!r} (it is {got!r})")
