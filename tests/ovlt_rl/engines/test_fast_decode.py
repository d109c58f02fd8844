"""The hf engine's fast path (static KV cache, own decode loop) against transformers `generate`, on CPU.

The fast path runs here without CUDA graphs; the step it captures on GPUs is the same code. The
tiny model's own weights make greedy decoding repeat one token, which would hide position or cache
errors, so most tests use a copy with larger random text weights: its greedy outputs vary token
by token.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from ovlt_rl.data.prompts import chat_messages, encode_prompt, render_prompt
from ovlt_rl.engines.base import SamplingParams
from ovlt_rl.engines.fast_decode import Mode, StaticCacheDecoder, filter_top_k_top_p, rope_positions, sample_tokens
from ovlt_rl.engines.hf import HFEngine, batch_prompts, use_fast_decode


@pytest.fixture(scope="module")
def lively_model(tiny_model):
    """The tiny model with N(0, 0.15) text weights (matrices only; norms and the vision tower kept)."""
    model = copy.deepcopy(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "visual" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def _prompt(processor, colour, text, size=56, image=True):
    chat = chat_messages([{"role": "user", "content": ("<image>" if image else "") + text}])
    return encode_prompt(processor, render_prompt(processor, chat), [Image.new("RGB", (size, size), colour)] if image else [])


@pytest.fixture(scope="module")
def prompts(tiny_processor):
    """Image prompts of different lengths and image sizes, and one text-only prompt."""
    p = tiny_processor
    return [
        _prompt(p, "red", "How many shapes?"),
        _prompt(p, "blue", "What value does the green bar show in this chart? Answer.", size=112),
        _prompt(p, "green", "Is 3 greater than 2?", image=False),
        _prompt(p, "red", "Count the circles one by one and answer.", size=84),
    ]


def _engines(model_dir, model, processor, micro_batch_size=16):
    plain = HFEngine(str(model_dir), model=model, processor=processor, fast_decode="off", micro_batch_size=micro_batch_size)
    fast = HFEngine(str(model_dir), model=model, processor=processor, fast_decode="on", micro_batch_size=micro_batch_size)
    return plain, fast


def test_greedy_matches_generate_across_prefill_chunks(tiny_model_dir, lively_model, tiny_processor, prompts):
    plain, fast = _engines(tiny_model_dir, lively_model, tiny_processor)
    fast.fast.prefill_tokens = 160  # 2 prompts per prefill forward: chunks of different widths
    # The image prompts' rope delta is not 0, so a decode position that ignored it would differ.
    inputs = batch_prompts(prompts, plain.pad_id, "cpu")
    nxt = rope_positions(lively_model, inputs).amax(dim=(0, 2)) + 1
    assert [int(x) for x in nxt] != [len(p["input_ids"]) for p in prompts]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=20, logprobs=True)
    want = plain.generate(prompts, params)
    got = fast.generate(prompts, params)
    for w, g in zip(want, got):
        assert g[0].token_ids == w[0].token_ids
        assert g[0].text == w[0].text and g[0].finish_reason == w[0].finish_reason
        # The fast path's in-loop log-probs equal the plain path's teacher-forced ones.
        assert len(g[0].logprobs) == len(w[0].logprobs) == len(w[0].token_ids)
        assert max(abs(a - b) for a, b in zip(g[0].logprobs, w[0].logprobs)) < 1e-4
    assert len({tuple(w[0].token_ids) for w in want}) == len(prompts)  # the rows really differ
    assert all(len(set(w[0].token_ids)) > 5 for w in want)  # and aren't one repeated token


def test_n_samples_repetition_penalty_and_workspace_reuse(tiny_model_dir, lively_model, tiny_processor, prompts):
    plain, fast = _engines(tiny_model_dir, lively_model, tiny_processor)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, logprobs=False)
    want = plain.generate(prompts, greedy)
    # n=3 greedy: each prompt is prefilled once and its cache copied to 3 rows.
    got = fast.generate(prompts, SamplingParams(n=3, temperature=0.0, max_new_tokens=12, logprobs=False))
    assert [[g.token_ids for g in grp] for grp in got] == [[w[0].token_ids] * 3 for w in want]
    ws = fast.fast.ws
    assert ws.rows == 12
    # A smaller call reuses the buffers (spare rows idle) and must still be right.
    got = fast.generate(prompts[1:3], SamplingParams(n=3, temperature=0.0, max_new_tokens=12, logprobs=False))
    assert fast.fast.ws is ws
    assert [[g.token_ids for g in grp] for grp in got] == [[w[0].token_ids] * 3 for w in want[1:3]]
    # A much smaller one gets buffers of its own size.
    got = fast.generate(prompts[2:3], greedy)
    assert fast.fast.ws.rows == 1 and got[0][0].token_ids == want[2][0].token_ids
    penalised = SamplingParams(n=1, temperature=0.0, max_new_tokens=16, logprobs=False, repetition_penalty=1.3)
    want_p = plain.generate(prompts, penalised)
    got_p = fast.generate(prompts, penalised)
    assert [g[0].token_ids for g in got_p] == [w[0].token_ids for w in want_p]
    assert [w[0].token_ids for w in want_p] != [w[0].token_ids for w in plain.generate(prompts, SamplingParams(
        n=1, temperature=0.0, max_new_tokens=16, logprobs=False))]  # the penalty changed something


def test_eos_and_stop_strings_cut_like_generate(tiny_model_dir, lively_model, tiny_processor, prompts):
    plain, _ = _engines(tiny_model_dir, lively_model, tiny_processor)
    free = plain.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=16, logprobs=False))
    # Make the 4th greedy token of prompt 0 an EOS: rows that produce it stop there.
    eos_tok = free[0][0].token_ids[3]
    model = copy.deepcopy(lively_model)
    model.generation_config.eos_token_id = [eos_tok, *plain.eos_ids]
    plain, fast = _engines(tiny_model_dir, model, tiny_processor)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=16, logprobs=True)
    want, got = plain.generate(prompts, params), fast.generate(prompts, params)
    assert want[0][0].token_ids == free[0][0].token_ids[:4] and want[0][0].finish_reason == "stop"
    for w, g in zip(want, got):
        assert (g[0].token_ids, g[0].finish_reason) == (w[0].token_ids, w[0].finish_reason)
        assert len(g[0].logprobs) == len(g[0].token_ids)
    # A stop string taken from the middle of prompt 1's free response.
    text = tiny_processor.tokenizer.decode(free[1][0].token_ids[5:8], skip_special_tokens=True).strip()
    assert text
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=16, logprobs=False, stop=[text])
    want, got = plain.generate(prompts, params), fast.generate(prompts, params)
    assert want[1][0].finish_reason == "stop" and text in want[1][0].text and len(want[1][0].token_ids) < 16
    for w, g in zip(want, got):
        assert (g[0].token_ids, g[0].finish_reason) == (w[0].token_ids, w[0].finish_reason)


def test_sampling_is_seeded_avoids_vision_tokens_and_reports_model_logprobs(tiny_model_dir, lively_model, tiny_processor, prompts):
    _, fast = _engines(tiny_model_dir, lively_model, tiny_processor)
    params = SamplingParams(n=4, temperature=0.7, top_p=0.95, top_k=50, max_new_tokens=12, seed=3)
    a = fast.generate(prompts, params)
    b = fast.generate(prompts, params)
    assert [[g.token_ids for g in grp] for grp in a] == [[g.token_ids for g in grp] for grp in b]
    rows = [g for grp in a for g in grp]
    assert len({tuple(g.token_ids) for g in rows}) > len(prompts)  # samples of one prompt differ
    assert not set(fast.forbidden) & {t for g in rows for t in g.token_ids}
    # In-loop log-probs are the model's at the sampling temperature (what compute_logprobs gives).
    flat_prompts = [p for p in prompts for _ in range(4)]
    ref = fast.compute_logprobs(flat_prompts, [g.token_ids for g in rows], temperature=0.7)
    assert max(abs(x - y) for g, r in zip(rows, ref) for x, y in zip(g.logprobs, r)) < 1e-4
    at_one = fast.compute_logprobs(flat_prompts, [g.token_ids for g in rows])
    assert max(abs(x - y) for g, r in zip(rows, at_one) for x, y in zip(g.logprobs, r)) > 1e-2  # the temperature is applied


def _mode(**kw):
    return Mode(**{"greedy": False, "filtered": False, "penalty": False, "logprobs": False, **kw})


def _draw(logits, mode, n=20000, top_k=0, top_p=1.0, temperature=1.0, forbidden=None, seen=None, penalty=1.0):
    torch.manual_seed(0)
    rows = logits.expand(n, -1).clone()
    tok = sample_tokens(rows, mode, temperature=torch.tensor([temperature]), top_k=torch.tensor([top_k]),
                        top_p=torch.tensor([top_p]), penalty=torch.tensor([penalty]),
                        seen=None if seen is None else seen.expand(n, -1), forbidden=forbidden)
    return torch.bincount(tok, minlength=logits.shape[-1]).float() / n


def test_sample_tokens_draws_from_the_processed_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    freq = _draw(logits, _mode())
    assert torch.allclose(freq, probs[0], atol=0.015)
    # temperature 2: p^(1/2), renormalised
    t2 = probs[0].sqrt() / probs[0].sqrt().sum()
    assert torch.allclose(_draw(logits, _mode(), temperature=2.0), t2, atol=0.015)
    freq = _draw(logits, _mode(filtered=True), top_k=2)
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.015)
    freq = _draw(logits, _mode(filtered=True), top_p=0.7)  # 0.5 < 0.7: the nucleus is {0, 1}
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.625) < 0.015
    freq = _draw(logits, _mode(filtered=True), top_p=0.4)  # the top token alone
    assert freq[0] == 1.0
    freq = _draw(logits, _mode(), forbidden=torch.tensor([0]))
    assert freq[0] == 0 and torch.allclose(freq[1:], probs[0, 1:] / 0.5, atol=0.015)


def test_sample_tokens_greedy_and_penalty():
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.1]])
    kw = dict(temperature=torch.tensor([1.0]), top_k=torch.tensor([0]), top_p=torch.tensor([1.0]))
    assert sample_tokens(logits, _mode(greedy=True), penalty=torch.tensor([1.0]), seen=None, forbidden=None, **kw).item() == 0
    seen = torch.tensor([[True, False, False, False]])
    # 2.0 / 1.5 = 1.33 < 1.5: the seen top token loses its place
    assert sample_tokens(logits, _mode(greedy=True, penalty=True), penalty=torch.tensor([1.5]), seen=seen,
                         forbidden=None, **kw).item() == 1
    assert sample_tokens(logits, _mode(greedy=True), penalty=torch.tensor([1.0]), seen=None,
                         forbidden=torch.tensor([0, 1]), **kw).item() == 3


def test_filter_keeps_ties_and_the_top_token():
    logits = torch.tensor([[3.0, 3.0, 1.0, 0.0]])
    out = filter_top_k_top_p(logits, torch.tensor([1]), torch.tensor([1.0]))
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = filter_top_k_top_p(logits, torch.tensor([0]), torch.tensor([1e-6]))
    assert torch.isfinite(out).sum() >= 1 and torch.isfinite(out[0, 0])


def test_fast_decode_switch(tiny_model_dir, tiny_model, tiny_processor):
    assert use_fast_decode("auto", torch.device("cuda")) and not use_fast_decode("auto", torch.device("cpu"))
    assert use_fast_decode("on", torch.device("cpu")) and not use_fast_decode("off", torch.device("cuda"))
    assert use_fast_decode(True, torch.device("cpu")) and not use_fast_decode("False", torch.device("cuda"))
    with pytest.raises(ValueError, match="rollout.hf_fast_decode: unknown 'fast'"):
        use_fast_decode("fast", torch.device("cpu"))
    from ovlt.config import load_config
    from ovlt_rl.engines import make_engine

    cfg = load_config("grpo", ["data.train_files=[x]", "rollout.hf_fast_decode=on", "trainer.device=cpu"])
    assert make_engine(cfg, str(tiny_model_dir), torch.device("cpu")).fast is not None
    cfg = load_config("grpo", ["data.train_files=[x]", "trainer.device=cpu"])
    assert cfg.rollout.hf_fast_decode == "auto" and cfg.rollout.hf_decode_compile is True
    assert make_engine(cfg, str(tiny_model_dir), torch.device("cpu")).fast is None


def test_compiled_layer_parts_trace_whole_and_agree(tiny_model_dir, lively_model, tiny_processor, prompts):
    # "aot_eager" runs dynamo and AOT autograd's tracing without a C++ compiler: fullgraph=True
    # fails if the layer parts don't trace as one graph each.
    # (The engine compiles on GPUs only; the decoder takes any backend.)
    plain, _ = _engines(tiny_model_dir, lively_model, tiny_processor)
    compiled = StaticCacheDecoder(lively_model, eos_ids=sorted(plain.eos_ids), pad_id=plain.pad_id,
                                  forbidden=plain.forbidden, compile="aot_eager")
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=10, logprobs=False)
    want = plain.generate(prompts, params)
    got = compiled.generate(prompts, params, lambda chunk: batch_prompts(chunk, plain.pad_id, "cpu"))
    assert [ids[: len(w[0].token_ids)] for (ids, _), w in zip(got, want)] == [w[0].token_ids for w in want]


@pytest.mark.gpu(n=1)
def test_cuda_graph_decode_matches_generate_on_gpu(tiny_model_dir, lively_model, tiny_processor, prompts):
    """The captured decode step (replayed, state reset between calls) against `generate`, fp32 on one GPU."""
    model = copy.deepcopy(lively_model).to("cuda")
    plain = HFEngine(str(tiny_model_dir), model=model, processor=tiny_processor, device="cuda", fast_decode="off")
    fast = HFEngine(str(tiny_model_dir), model=model, processor=tiny_processor, device="cuda", fast_decode="auto")
    assert fast.fast is not None and fast.fast.cuda_graphs
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=40, logprobs=True)
    want = plain.generate(prompts, params)
    for _ in range(2):  # the second call replays the graph captured by the first
        got = fast.generate(prompts, params)
        assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
        assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g[0].logprobs, w[0].logprobs)) < 1e-3
    assert len(fast.fast.ws.graphs) == 1
    sampled = SamplingParams(n=4, temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=40, seed=1)
    a, b = fast.generate(prompts, sampled), fast.generate(prompts, sampled)
    assert [[g.token_ids for g in grp] for grp in a] == [[g.token_ids for g in grp] for grp in b]  # seeded in the graph
    assert len({tuple(g.token_ids) for grp in a for g in grp}) > len(prompts)
