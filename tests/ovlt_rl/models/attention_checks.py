"""Shared check of the GPU attention tests: a bf16 kernel's output and input gradients against an
fp32 reference computed from the same inputs."""

import torch


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...],
                             generator: torch.Generator) -> None:
    """`out` (bf16) within 2e-2 of `ref` (fp32), and the gradients of a random weighting of each
    with respect to `inputs` within 5% of the largest reference gradient."""
    assert (out.float() - ref).abs().max() < 2e-2
    w = torch.randn(out.shape, device=out.device, generator=generator)
    grads = torch.autograd.grad((out.float() * w).sum(), inputs)
    grads_ref = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(grads, grads_ref):
        assert (a.float() - b.float()).abs().max() / b.float().abs().max() < 5e-2
