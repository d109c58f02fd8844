"""Per-token KL estimators between the policy and a reference policy, and the KL loss.

The tokens were sampled from the policy pi, so KL(pi || ref) = E_pi[log pi - log ref] can be
estimated from the log-probs of the sampled tokens alone (Schulman, "Approximating KL
Divergence", 2020). With x = log ref - log pi (so ref/pi = e^x):

    k1 = -x = log pi - log ref          unbiased, high variance, can be negative
    k2 = x^2 / 2                        biased, low variance, >= 0      (alias "mse")
    k3 = e^x - x - 1                    unbiased, low variance, >= 0    (alias "low_var_kl")

k3 is unbiased because E_pi[e^x] = E_pi[ref/pi] = 1, and non-negative because e^x >= 1 + x.
GRPO (and OpenVLThinker's EasyR1 recipe, coefficient 1e-2) uses k3 as a loss term.

k3 guards, as in verl/EasyR1: x is clamped to [-20, 20] before exp, and k3 to [-10, 10].
The upper clamp matters: e^x grows fast, so a few tokens the policy now finds very unlikely
(x large) would otherwise dominate the loss and its gradient (clamped tokens give no
gradient). The lower bound is never reached, since k3 >= 0; it is kept for the customary
interval. e^x - 1 is computed with expm1: near x = 0, where the policy is close to the
reference, exp(x) - 1 in fp32 is mostly rounding error and can even come out below x.
"""

from __future__ import annotations

import torch

from ovlt_rl.algos.losses import aggregate

_KINDS = {"k1": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate, same shape as the inputs.

    kind: "k1", "k2" (alias "mse") or "k3" (alias "low_var_kl"); see the module docstring.
    Gradients flow through ``log_probs``; ``ref_log_probs`` is a fixed target.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {sorted(_KINDS)}")
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and ref_log_probs {tuple(ref_log_probs.shape)} differ")
    estimator = _KINDS[kind]
    if estimator == "k1":
        return log_probs - ref_log_probs
    if estimator == "k2":
        return 0.5 * (log_probs - ref_log_probs).square()
    x = (ref_log_probs - log_probs).clamp(-20.0, 20.0)
    return (torch.expm1(x) - x).clamp(-10.0, 10.0)


def kl_loss(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor,
            kind: str = "low_var_kl", agg: str = "token-mean",
            denominator: float | torch.Tensor | None = None) -> torch.Tensor:
    """KL penalty as a loss: ``kl_penalty`` aggregated over the selected tokens.

    Use the same ``agg`` and ``denominator`` as the policy loss it is added to (times its
    coefficient), so both terms are normalised alike under gradient accumulation.
    """
    return aggregate(kl_penalty(log_probs, ref_log_probs, kind), mask, agg, denominator)
