"""The FSDP2 policy worker, in-process as a 1-rank gloo group (no Ray): update equivalences,
non-finite skips, and agreement with the rollout engine after a weight sync."""

import socket

import pytest
import torch
from PIL import Image

from ovlt.config import load_config
from ovlt_rl.data.prompts import chat_messages, encode_prompt, render_prompt
from ovlt_rl.engines.hf import HFEngine
from ovlt_rl.models.loading import load_processor, resolve_model_path
from ovlt_rl.models.sequences import make_sample
from ovlt_rl.workers.policy import PolicyWorker, worker_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return resolve_model_path("tiny")


def _prompt(processor, colour, text):
    img = Image.new("RGB", (56, 56), colour)
    chat = chat_messages([{"role": "user", "content": f"<image>{text}"}])
    return encode_prompt(processor, render_prompt(processor, chat), [img])


def _samples(processor, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = _prompt(processor, ("red", "blue", "green")[i % 3], f"How many shapes? {i}")
        resp = torch.randint(20, 300, (5 + i % 4,), generator=g).tolist()
        s = make_sample(p, resp)
        s["advantages"] = s["loss_mask"] * (1.0 if i % 2 else -0.5)
        s["old_logprobs"] = torch.zeros(len(s["input_ids"]))
        out.append(s)
    return out


def _worker(model_path, **overrides):
    args = [f"{k}={v}" for k, v in {"actor.use_kl_loss": "false", "actor.lr": "1e-3", "trainer.device": "cpu",
                                    "data.train_files": "[x]", "actor.global_batch_size": "8", **overrides}.items()]
    cfg = load_config("sft", args)
    w = PolicyWorker(model_path, 0, 1, "127.0.0.1", _free_port(), **worker_settings(cfg))
    w.setup(total_opt_steps=10)
    return w


def _params(w):
    sd = w.full_state_dict()
    return {k: v.clone() for k, v in sd.items()}


def test_one_batch_equals_accumulated_micro_batches(model_path):
    processor = load_processor(model_path)
    samples = _samples(processor)
    results = {}
    for micro in (8, 2):
        w = _worker(model_path, **{"actor.micro_batch_size": micro})
        # old log-probs = the current policy, so every ratio starts at 1
        lps = w.compute_logprobs(samples, which="policy", micro_batch_size=4, temperature=1.0)
        for s, lp in zip(samples, lps):
            s["old_logprobs"] = lp
        denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
        m = w.update_policy(samples, denominator=denom, temperature=1.0)
        assert m["actor/skipped"] == 0.0
        results[micro] = (_params(w), m["actor/grad_norm"])
        w.shutdown()
    (p8, g8), (p2, g2) = results[8], results[2]
    # Same gradient (the clipped norm is over every parameter) ...
    assert g8 == pytest.approx(g2, rel=1e-5)
    # ... and the same update. Adam divides by |g|, so entries whose gradient is at rounding level
    # may move differently; all but a sliver must agree to 1e-6 (lr is 1e-3).
    total = sum(v.numel() for v in p8.values())
    off = sum(int(((p8[k] - p2[k]).abs() > 1e-6).sum()) for k in p8)
    assert off / total < 0.01, f"{off} of {total} parameters differ"
    base = _params_of_fresh(model_path)
    changed = sum(not torch.equal(base[k], p8[k]) for k in p8)
    assert changed > 0  # the step really moved the weights


def test_on_policy_update_takes_old_logprobs_from_its_own_forward(model_path):
    # One update per rollout batch: the controller skips the old log-prob pass and the worker uses
    # its forward pass, detached. Same ratios (1), same update as with the precomputed old log-probs.
    processor = load_processor(model_path)
    samples = _samples(processor)
    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
    results = []
    for precomputed in (True, False):
        w = _worker(model_path, **{"actor.micro_batch_size": 4})
        batch = [dict(s) for s in samples]
        for s, lp in zip(batch, w.compute_logprobs(batch, which="policy", micro_batch_size=4, temperature=1.0)):
            if precomputed:
                s["old_logprobs"] = lp
            else:
                del s["old_logprobs"]
        m = w.update_policy(batch, denominator=denom, temperature=1.0)
        results.append((_params(w), m))
        w.shutdown()
    (p_old, m_old), (p_self, m_self) = results
    assert m_self["actor/ratio_mean_wsum"] == pytest.approx(m_self["actor/tokens"])  # every ratio is 1
    assert m_self["actor/pg_loss"] == pytest.approx(m_old["actor/pg_loss"], rel=1e-5)
    assert m_self["actor/grad_norm"] == pytest.approx(m_old["actor/grad_norm"], rel=1e-5)
    off = sum(int(((p_old[k] - p_self[k]).abs() > 1e-6).sum()) for k in p_old)
    assert off / sum(v.numel() for v in p_old.values()) < 0.01


def _params_of_fresh(model_path):
    w = _worker(model_path, **{"actor.micro_batch_size": 8})
    p = _params(w)
    w.shutdown()
    return p


def test_nonfinite_loss_skips_the_update(model_path):
    processor = load_processor(model_path)
    samples = _samples(processor, n=4)
    w = _worker(model_path, **{"actor.micro_batch_size": 4, "actor.global_batch_size": "4"})
    before = _params(w)
    samples[0]["advantages"][-1] = float("nan")
    m = w.update_policy(samples, denominator=10.0, temperature=1.0)
    assert m["actor/skipped"] == 1.0
    assert w.opt_steps == 0
    after = _params(w)
    assert all(torch.equal(before[k], after[k]) for k in before)
    samples[0]["advantages"][-1] = 1.0
    m = w.update_policy(samples, denominator=10.0, temperature=1.0)
    assert m["actor/skipped"] == 0.0 and w.opt_steps == 1
    w.shutdown()


def test_rollout_engine_agrees_with_policy_after_sync(model_path):
    processor = load_processor(model_path)
    samples = _samples(processor, n=4)
    w = _worker(model_path, **{"actor.micro_batch_size": 4, "actor.global_batch_size": "4"})
    for s in samples:
        s["old_logprobs"] = torch.zeros(len(s["input_ids"]))
    w.update_policy(samples, denominator=10.0, temperature=1.0)  # move the policy away from the initial weights
    engine = HFEngine(model_path, device="cpu")
    prompts = [_prompt(processor, "red", "How many shapes? 0"), _prompt(processor, "blue", "How many shapes? 1")]
    responses = [[40, 41, 42, 43], [50, 51, 52]]
    before = engine.compute_logprobs(prompts, responses)
    engine.load_state_dict(w.full_state_dict())
    after = engine.compute_logprobs(prompts, responses)
    policy = w.compute_logprobs([make_sample(p, r) for p, r in zip(prompts, responses)], which="policy", micro_batch_size=2, temperature=1.0)
    diffs, diffs_before = [], []
    for p, r, a, b, pl in zip(prompts, responses, after, before, policy):
        pl = pl[len(p["input_ids"]):]
        assert len(pl) == len(r) == len(a)
        diffs += [abs(x - float(y)) for x, y in zip(a, pl)]
        diffs_before += [abs(x - float(y)) for x, y in zip(b, pl)]
    assert max(diffs) < 1e-4
    assert max(diffs_before) > 1e-3  # the check would catch a missed sync
    w.shutdown()


def test_update_moves_probability_toward_positive_advantages(model_path):
    processor = load_processor(model_path)
    samples = _samples(processor, n=4)
    w = _worker(model_path, **{"actor.micro_batch_size": 4, "actor.global_batch_size": "4", "actor.lr": "1e-3"})
    for i, s in enumerate(samples):
        s["advantages"] = s["loss_mask"] * (1.0 if i < 2 else -1.0)
    before = w.compute_logprobs(samples, which="policy", micro_batch_size=4, temperature=1.0)
    for s, lp in zip(samples, before):
        s["old_logprobs"] = lp
    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
    for _ in range(3):
        w.update_policy(samples, denominator=denom, temperature=1.0)
    after = w.compute_logprobs(samples, which="policy", micro_batch_size=4, temperature=1.0)
    change = [float((a - b)[s["loss_mask"].bool()].sum()) for s, a, b in zip(samples, after, before)]
    assert change[0] > 0 and change[1] > 0, change
    assert change[2] < 0 and change[3] < 0, change
    w.shutdown()


def test_logprobs_and_update_at_the_rollout_temperature(model_path):
    """GRPO scores samples under softmax(logits / T) of the rollout's temperature T: the worker's
    log-probs at T match the plain model's, and an update whose old log-probs were taken at T
    starts on-policy (every ratio 1), which log-probs at temperature 1 would not be."""
    from ovlt_rl.models.sequences import build_batch

    processor = load_processor(model_path)
    samples = _samples(processor, n=4)
    w = _worker(model_path, **{"actor.micro_batch_size": 4, "actor.global_batch_size": "4"})
    at_half = w.compute_logprobs(samples, which="policy", micro_batch_size=4, temperature=0.5)
    at_one = w.compute_logprobs(samples, which="policy", micro_batch_size=4, temperature=1.0)

    engine = HFEngine(model_path, device="cpu")  # the same initial weights, run by plain transformers
    batch = build_batch(samples, w._pad_id())
    with torch.no_grad():
        logits = engine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
                              image_grid_thw=batch["image_grid_thw"]).logits.float()
    for i, s in enumerate(samples):
        m = s["loss_mask"].bool().clone()
        m[0] = False
        pos = m.nonzero().squeeze(-1)
        want = torch.log_softmax(logits[i, pos - 1] / 0.5, dim=-1).gather(-1, s["input_ids"][pos, None]).squeeze(-1)
        assert (at_half[i][pos] - want).abs().max() < 1e-4
        assert (at_half[i][pos] - at_one[i][pos]).abs().max() > 1e-2  # the temperature really changes them

    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
    for s, lp in zip(samples, at_half):
        s["old_logprobs"] = lp
    m = w.update_policy(samples, denominator=denom, temperature=0.5)
    assert m["actor/ratio_mean_wsum"] / m["actor/tokens"] == pytest.approx(1.0, abs=1e-5)
    assert m["actor/approx_kl_wsum"] == pytest.approx(0.0, abs=1e-6)
    w.shutdown()


def test_bf16_reference_keeps_bf16_parameters_and_gives_the_policys_logprobs(model_path):
    """Under bf16 compute the reference stores its parameters in bf16 (half the memory of the
    policy's fp32 ones) and, before any update, gives exactly the policy's log-probs: mixed
    precision computes the policy in the same bf16 values."""
    w = _worker(model_path, **{"actor.use_kl_loss": "true", "model.dtype": "bf16"})
    ref_dtypes = {p.dtype for p in w.ref.parameters()}
    policy_dtypes = {p.dtype for p in w.policy.parameters()}
    assert ref_dtypes == {torch.bfloat16} and policy_dtypes == {torch.float32}
    processor = load_processor(model_path)
    samples = _samples(processor, n=3)
    kw = dict(micro_batch_size=2, temperature=1.0)
    ref = w.compute_logprobs(samples, which="ref", **kw)
    pol = w.compute_logprobs(samples, which="policy", **kw)
    w.shutdown()
    for r, p, s in zip(ref, pol, samples):
        mask = s["loss_mask"].bool()
        assert torch.equal(r[mask], p[mask]) and r[mask].abs().sum() > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu(n=1))])
def test_compiled_decoder_layers_give_the_eager_update(model_path, device):
    """actor.compile: the policy's and the reference's decoder layers run through torch.compile
    (inductor: C++ on CPU, Triton on a GPU; dynamo captures graphs) and the KL-regularised update
    comes out as the eager one's, to float rounding (fp32, so that rounding stays small)."""
    from torch._dynamo.utils import counters

    processor = load_processor(model_path)
    samples = _samples(processor, n=4)
    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
    results = {}
    for compiled in (False, True):
        counters.clear()
        w = _worker(model_path, **{"actor.compile": str(compiled).lower(), "actor.use_kl_loss": "true",
                                   "actor.micro_batch_size": "4", "trainer.device": device, "model.dtype": "fp32"})
        layers = [*w.policy.model.model.language_model.layers, *w.ref.model.model.language_model.layers]
        assert all((layer._compiled_call_impl is not None) == compiled for layer in layers)
        ref = w.compute_logprobs(samples, which="ref", micro_batch_size=4, temperature=1.0)
        for s, lp in zip(samples, ref):
            s["ref_logprobs"] = lp
        m = w.update_policy(samples, denominator=denom, temperature=1.0)
        results[compiled] = (_params(w), m["actor/grad_norm"], ref)
        assert (counters["stats"]["unique_graphs"] > 0) == compiled
        w.shutdown()
    (pe, ge, re), (pc, gc, rc) = results[False], results[True]
    assert gc == pytest.approx(ge, rel=1e-4)
    for a, b in zip(re, rc):
        torch.testing.assert_close(b.cpu(), a.cpu(), rtol=1e-5, atol=1e-5)
    for k in pe:
        torch.testing.assert_close(pc[k].cpu(), pe[k].cpu(), rtol=1e-4, atol=1e-5)
