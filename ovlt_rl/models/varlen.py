"""torch's variable-length flash attention (`torch.nn.attention.varlen.varlen_attn`), causal or
not, behind one call that hides the differences between torch versions.

Why a module of its own: two attention implementations use it, ovlt's packed text attention
(`ovlt_rl.workers.packed_attention`, causal, one call per packed row) and the vision tower's
window attention (`ovlt_rl.models.vision_attention`, non-causal, one call over all windows of a
layer). Both need the same three things: find the function (torch >= 2.9 has it), check once per
device, dtype and mode that it runs forward AND backward here (a torch whose op lacks a backward,
or a GPU the kernel does not support, must fall back with a warning instead of crashing mid-step),
and call it across API versions:

- torch >= 2.12: `window_size=(-1, 0)` is causal, `(-1, -1)` full attention; `enable_gqa` for
  grouped key/value heads;
- torch 2.9-2.11: an `is_causal` flag, and no GQA (key/value heads are repeated here instead).
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch

log = logging.getLogger(__name__)

HALF = (torch.float16, torch.bfloat16)
"""The dtypes the flash kernel takes; fp32 goes to the callers' SDPA fallbacks."""


@functools.lru_cache(maxsize=1)
def find_varlen():
    """(varlen_attn, its parameter names) or None when this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def call_varlen(q, k, v, cu, max_len, scaling, *, causal: bool):
    """varlen_attn on [T, heads, D] tensors with the same `cu` (int32 [N+1]) for queries and keys."""
    fn, params = find_varlen()
    kw = {}
    if "scale" in params:
        kw["scale"] = scaling
    if "window_size" in params:  # torch >= 2.12: causal is the window (-1, 0), full attention (-1, -1)
        kw["window_size"] = (-1, 0) if causal else (-1, -1)
    else:  # torch 2.9-2.11: an is_causal flag
        kw["is_causal"] = causal
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:  # older API: give every query head its key/value head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return fn(q, k, v, cu, cu, max_len, max_len, **kw)


@functools.lru_cache(maxsize=8)
def varlen_works(device: torch.device, dtype: torch.dtype, causal: bool) -> bool:
    """Run the kernel once in this mode, forward and backward, on a tiny GQA input; False (with a
    warning) on any failure. Cached: the first caller pays a few milliseconds.

    The probe leaves inference mode and turns grad on, so that a first call from inside a
    `no_grad` / `inference_mode` forward (rollout prefill) probes the same thing as one from training.
    """
    try:
        with torch.inference_mode(False), torch.enable_grad():
            q = torch.randn(5, 4, 64, device=device, dtype=dtype, requires_grad=True)
            kv = torch.randn(5, 2, 64, device=device, dtype=dtype, requires_grad=True)
            cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
            out = call_varlen(q, kv, kv, cu, 3, 64**-0.5, causal=causal)
            out.float().sum().backward()
        return bool(torch.isfinite(q.grad).all())
    except Exception as e:  # noqa: BLE001 - any failure means: don't use it
        log.warning("torch varlen flash attention (causal=%s) unusable here (%s); falling back to SDPA", causal, e)
        return False


def varlen_usable(device_type: str, dtype: torch.dtype, causal: bool) -> bool:
    """Whether attention on this device and dtype would take the varlen kernel (probes it once)."""
    if device_type != "cuda" or dtype not in HALF or find_varlen() is None:
        return False
    return varlen_works(torch.device("cuda", torch.cuda.current_device()), dtype, causal)


def varlen_attention(query, key, value, cu, max_len: int, scaling, *, causal: bool):
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> [1, T, H, D] (transformers' flash layout),
    attending within each segment of `cu`; None where the kernel can't run this call (CPU, fp32,
    no varlen_attn, a failed probe, or a non-default scale on a torch whose varlen_attn has none)."""
    found = find_varlen()
    if found is None or not query.is_cuda or query.dtype not in HALF:
        return None
    head_dim = query.shape[-1]
    scaling = head_dim**-0.5 if scaling is None else scaling
    if abs(scaling - head_dim**-0.5) > 1e-6 * head_dim**-0.5 and "scale" not in found[1]:
        return None  # an old varlen_attn without `scale` uses 1/sqrt(D) only
    if not varlen_works(query.device, query.dtype, causal):
        return None
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, heads, D]
    return call_varlen(q, k, v, cu.to(torch.int32), max_len, scaling, causal=causal)[None]
