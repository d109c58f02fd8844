"""Policy-gradient and SFT losses, loss aggregation, and memory-aware log-prob/entropy.

Shapes: per-token tensors are [B, T] (batch of sequences, response positions), with a mask
[B, T] that is True on the tokens that count (response tokens for RL, assistant tokens for
SFT). Masked positions may hold garbage (even inf/NaN): they are removed with ``torch.where``,
never by multiplying with the mask, because NaN * 0 is NaN.

Gradient accumulation. A mini-batch is often split into micro-batches whose gradients are
summed by repeated ``backward()``. Normalising each micro-batch by its *own* token count gives
a different gradient from the whole mini-batch (micro-batches with fewer tokens get more weight
per token). To get exactly the mini-batch gradient:

    denom = loss_denominator(minibatch_mask, mode)            # once, over the whole mini-batch
    for mb in micro_batches:
        loss, _ = policy_loss(..., mb.mask, agg=mode, denominator=denom)
        loss.backward()                                       # gradients add up

With data parallelism that *averages* gradients over W ranks (DDP/FSDP do), each rank must
pass ``denominator = global_denom / W`` where ``global_denom`` is the sum of the ranks' local
``loss_denominator`` values (an all-reduce): the average of the ranks' sums over ``global_denom / W``
is then the global sum over ``global_denom``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ovlt_rl.algos._mask import as_bool_mask

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")

# A log-ratio beyond +-20 means ratio e^20 ~ 5e8: clamping it keeps exp() finite (an inf times a
# zero advantage would be NaN) and changes nothing that matters, since such tokens are clipped.
_MAX_LOG_RATIO = 20.0

# Rows (tokens) per chunk for log-prob and entropy. Each chunk materialises a few fp32
# [chunk, V] temporaries: 512 rows x 152k vocab x 4 bytes = 0.3 GB each for Qwen2.5.
DEFAULT_CHUNK_SIZE = 512


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {AGG_MODES}")


def _check_denominator(denominator) -> None:
    # Only Python numbers are checked: checking a tensor's value would force a device sync.
    if isinstance(denominator, (int, float)) and not denominator > 0:
        raise ValueError(f"denominator must be > 0, got {denominator}")


def loss_denominator(mask: torch.Tensor, mode: str = "token-mean") -> int:
    """The normaliser ``aggregate`` uses for ``mask`` under ``mode``, as an int.

    token-mean: number of selected tokens. seq-mean-*: number of sequences with at least one
    selected token. Compute it over a whole mini-batch and pass it as ``denominator=`` to every
    micro-batch (see the module docstring) so accumulated gradients equal the mini-batch's.
    """
    _check_mode(mode)
    mask = as_bool_mask(mask, "mask")
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got {tuple(mask.shape)}")
    if mode == "token-mean":
        return int(mask.sum())
    return int(mask.any(dim=-1).sum())


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              denominator: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token losses [B, T] to a scalar over the selected tokens.

    token-mean (default, DAPO/verl): sum of all selected token losses / number of selected
        tokens. Every token weighs the same, so long responses are not under-weighted.
    seq-mean-token-sum: per-sequence sum, then mean over sequences (longer sequences weigh
        more). With ``denominator = num_seqs * max_len`` this is Dr.GRPO's constant normaliser.
    seq-mean-token-mean: per-sequence mean, then mean over sequences (original GRPO).

    Sequences without selected tokens are not counted in the seq-mean modes.
    denominator: replaces the count in the outer mean (tokens for token-mean, sequences for
        the seq modes); see ``loss_denominator`` and the module docstring. Without it the batch
        must have at least one selected token, since an empty batch has no mean.
    """
    _check_mode(mode)
    mask = as_bool_mask(mask, "mask")
    if loss_mat.dim() != 2 or loss_mat.shape != mask.shape:
        raise ValueError(f"loss_mat and mask must both be [B, T], got {tuple(loss_mat.shape)} "
                         f"and {tuple(mask.shape)}")
    _check_denominator(denominator)
    masked = torch.where(mask, loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device))
    if mode == "token-mean":
        total = masked.sum()
        count = mask.sum()
    else:
        per_seq = masked.sum(dim=-1)
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / mask.sum(dim=-1).clamp(min=1)
        total = per_seq.sum()
        count = mask.any(dim=-1).sum()
    if denominator is None:
        if not mask.any():
            raise ValueError("mask selects no tokens: nothing to average (pass denominator= for an "
                             "empty micro-batch of a larger mini-batch)")
        denominator = count
    return total / denominator


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the selected positions, for detached metrics (0 when none)."""
    x = torch.where(mask, x.detach().float(), 0.0)
    return x.sum() / mask.sum().clamp(min=1)


def policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.3,
                dual_clip: float | None = 3.0, agg: str = "token-mean",
                denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate with asymmetric clipping and dual-clip; returns (loss, metrics).

    Per token, with ratio r = exp(log_probs - old_log_probs) and advantage A:

        L = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))          (PPO clip)
        if A < 0 and dual_clip is set:  L = min(L, -A dual_clip)         (dual-clip)

    The clip stops an update from moving r far from 1 on one batch. A higher upper bound
    (DAPO's "clip-higher", 0.3 vs 0.2 in OpenVLThinker's EasyR1 recipe) leaves room to raise
    the probability of unlikely tokens, against entropy collapse. For A < 0 the PPO term grows
    without bound in r (a token that became much more likely but is bad); dual-clip (Ye et al.,
    2020) caps it at -A * dual_clip so one stale token cannot dominate the gradient. Clipped
    and dual-clipped tokens give zero gradient.

    log_probs: [B, T] under the current policy (with grad); old_log_probs: [B, T] under the
    policy that generated the batch; advantages: [B, T] or [B] (broadcast over tokens);
    response_mask: [B, T]. agg/denominator: see ``aggregate``. The log-ratio is clamped to
    +-20 before exp (see ``_MAX_LOG_RATIO``).

    Metrics (detached 0-dim float tensors, means over this call's selected tokens):
    clip_frac: fraction where the clipped term is the one taken (gradient stopped by clip);
    dual_clip_frac: fraction where dual-clip is active; approx_kl: mean(old - new) log-prob,
    an estimate of KL(old || new); ratio_mean: mean ratio.
    """
    if not 0 < clip_low < 1 or not clip_high > 0:
        raise ValueError(f"need 0 < clip_low < 1 and clip_high > 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(log_probs)
    for name, t in (("old_log_probs", old_log_probs), ("advantages", advantages), ("response_mask", response_mask)):
        if t.shape != log_probs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, log_probs has {tuple(log_probs.shape)}")
    mask = as_bool_mask(response_mask, "response_mask")

    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    if dual_clip is not None:
        capped = -advantages * dual_clip
        dual_active = (advantages < 0) & (token_loss > capped)
        token_loss = torch.where(dual_active, capped, token_loss)
    else:
        dual_active = torch.zeros_like(mask)

    loss = aggregate(token_loss, mask, agg, denominator)
    metrics = {
        "clip_frac": _masked_mean(clip_active, mask),
        "dual_clip_frac": _masked_mean(dual_active, mask),
        "approx_kl": _masked_mean(-log_ratio, mask),
        "ratio_mean": _masked_mean(ratio, mask),
    }
    return loss, metrics


def masked_nll(log_probs: torch.Tensor, mask: torch.Tensor, denominator: float | torch.Tensor | None = None,
               *, agg: str = "token-mean") -> torch.Tensor:
    """SFT loss: negative log-likelihood of the selected (assistant) tokens.

    ``log_probs`` [B, T] are the log-probabilities of the target tokens (from
    ``log_probs_from_logits``). Token-mean by default: the usual cross-entropy over all
    assistant tokens of the batch. ``denominator`` works as in ``aggregate`` for gradient
    accumulation.
    """
    return aggregate(-log_probs, mask, agg, denominator)


def _chunked_over_rows(fn: Callable[..., torch.Tensor], logits: torch.Tensor, *extra: torch.Tensor,
                       chunk_size: int) -> torch.Tensor:
    """Apply ``fn`` to [N, V] logits in row chunks and concatenate the [N] results.

    With autograd on, each chunk runs under activation checkpointing: otherwise autograd would
    keep every chunk's fp32 temporaries for backward, i.e. the whole fp32 [N, V] that chunking
    is meant to avoid. Backward recomputes one chunk at a time instead (cheap elementwise work).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float32, device=logits.device)
    use_ckpt = torch.is_grad_enabled() and logits.requires_grad
    pieces = zip(logits.split(chunk_size), *(e.split(chunk_size) for e in extra))
    outs = [checkpoint(fn, *p, use_reentrant=False) if use_ckpt else fn(*p) for p in pieces]
    return torch.cat(outs)


def _shifted_fp32(logits: torch.Tensor) -> torch.Tensor:
    """fp32 logits minus their row max. Both results below are invariant to the shift, but
    without it they are differences of large numbers: with logits near 1000, fp32 spacing is
    6e-5 and the entropy came out 2e-3 off. The max is detached: the shift has no gradient."""
    z = logits.float()
    return z - z.detach().amax(dim=-1, keepdim=True)


def _log_prob_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # log softmax(z)[y] = z[y] - logsumexp(z)
    z = _shifted_fp32(logits)
    return z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def _entropy_rows(logits: torch.Tensor) -> torch.Tensor:
    # H = -sum p log p = logsumexp(z) - sum p z, with p = exp(z - logsumexp(z)): never forms
    # log p of a tiny p.
    z = _shifted_fp32(logits)
    lse = torch.logsumexp(z, dim=-1)
    p = torch.exp(z - lse.unsqueeze(-1))
    return lse - (p * z).sum(dim=-1)


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """log softmax(logits)[labels], as float32, shape ``labels.shape``.

    logits: [..., V] in any float dtype (bf16 is upcast to fp32 one chunk at a time); labels:
    [...] integer token ids in [0, V). Equivalent to
    ``log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]`` but never holds
    more than ``chunk_size`` rows of fp32 [*, V] at once, forward or backward. (The logits
    themselves are still full-size: avoiding those needs fusing the LM head, which is the
    model's business.) Out-of-range labels (e.g. an ignore index of -100 left in) raise.
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal logits shape without the "
                         f"vocab dim {tuple(logits.shape[:-1])}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    vocab = logits.shape[-1]
    if labels.numel() and ((labels < 0) | (labels >= vocab)).any():
        raise ValueError(f"labels must lie in [0, {vocab}); got min {int(labels.min())}, max {int(labels.max())} "
                         "(replace ignore-index labels by a valid id and mask those positions)")
    flat = _chunked_over_rows(_log_prob_rows, logits.reshape(-1, vocab), labels.reshape(-1).long(),
                              chunk_size=chunk_size)
    return flat.reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, as float32, shape ``logits.shape[:-1]``.

    Computed as logsumexp(z) - sum softmax(z) z in fp32, ``chunk_size`` rows at a time (see
    ``log_probs_from_logits`` for the memory argument). Logits must be finite.
    """
    vocab = logits.shape[-1]
    flat = _chunked_over_rows(_entropy_rows, logits.reshape(-1, vocab), chunk_size=chunk_size)
    return flat.reshape(logits.shape[:-1])
