"""KL estimators k1/k2/k3 and the KL loss against hand-computed values."""

import math

import pytest
import torch

from ovlt_rl.algos import kl_loss, kl_penalty

LN2 = math.log(2.0)


def test_estimators_by_hand():
    # pi(token) = 1/2, ref(token) = 1/4: x = log ref - log pi = -ln 2
    # pi(token) = 1/4, ref(token) = 1/2: x = +ln 2
    logp = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64)
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([LN2, -LN2])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.5 * LN2**2, 0.5 * LN2**2])   # 0.2402
    # k3 = e^x - x - 1: 1/2 + ln2 - 1 = 0.19315 and 2 - ln2 - 1 = 0.30685
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([LN2 - 0.5, 1 - LN2])
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([0.1931472, 0.3068528], abs=1e-7)


def test_aliases():
    logp, ref = torch.tensor([-0.3, -2.0]), torch.tensor([-1.1, -0.4])
    assert torch.equal(kl_penalty(logp, ref, "mse"), kl_penalty(logp, ref, "k2"))
    assert torch.equal(kl_penalty(logp, ref, "low_var_kl"), kl_penalty(logp, ref, "k3"))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_on_a_categorical():
    # exact expectation under pi = [1/2, 1/4, 1/4] with ref = [1/4, 1/4, 1/2]:
    # KL(pi || ref) = 1/2 ln 2 + 0 + 1/4 ln(1/2) = ln2 / 4
    pi = [0.5, 0.25, 0.25]
    logp = torch.tensor([math.log(p) for p in pi], dtype=torch.float64)
    ref = torch.tensor([math.log(q) for q in (0.25, 0.25, 0.5)], dtype=torch.float64)
    for kind in ("k1", "k3"):
        expectation = sum(p * k for p, k in zip(pi, kl_penalty(logp, ref, kind).tolist()))
        assert expectation == pytest.approx(LN2 / 4)


def test_k3_clamps():
    logp = torch.tensor([-25.0, 0.0, -1.0])
    ref = torch.tensor([0.0, -30.0, -1.0])
    # x = 25 -> clamp 20 -> e^20 - 21 huge -> 10; x = -30 -> clamp -20 -> e^-20 + 19 -> 10; x = 0 -> 0
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([10.0, 10.0, 0.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_non_negative_including_tiny_differences(dtype):
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    scale = torch.logspace(-12, 1.5, n, dtype=dtype)        # tiny to large log-ratio magnitudes
    logp = torch.randn(n, generator=gen, dtype=dtype) - 3
    ref = logp + torch.randn(n, generator=gen, dtype=dtype) * scale
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()


def test_kl_loss_aggregates_over_mask():
    logp = torch.tensor([[math.log(0.5), math.log(0.25), 0.0]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), 99.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    assert kl_loss(logp, ref, mask, "k3").item() == pytest.approx((LN2 - 0.5 + 1 - LN2) / 2)   # 0.25
    assert kl_loss(logp, ref, mask, "k1", denominator=4).item() == pytest.approx(0.0)
    assert kl_loss(logp, ref, mask, "k2", "seq-mean-token-sum").item() == pytest.approx(LN2**2)
