"""Rollout benchmark: generated tokens/s of ovlt's transformers-based engine (HFEngine, fast path)
against plain `model.generate` in the same run, for a Qwen2.5-VL-7B-shaped model on one GPU.

    python bench/rollout.py [--batches 64 128 256] [--new-tokens 256] [--n 1] [--compile inductor|none] [--check]

Shapes: each prompt holds one 504x504 image (324 image tokens) and random text up to 960-1024
tokens in all (seeded, so padding is exercised); each of the batch's sequences (batch/n prompts x
n samples) generates `--new-tokens` tokens at temperature 1 (GRPO's sampling; EOS is improbable
with random weights, and only tokens really generated are counted).
tokens/s: generated tokens over the whole call, prefill (vision tower included) plus decode.
decode tokens/s: tokens after the first over the decode loop's time (ours: the engine's own
timing of its loop; generate: the call minus a prefill-only call, max_new_tokens=1, of that batch).
ours:      HFEngine with rollout.hf_fast_decode=on (HF prefill with batched vision windows, static KV
           cache, CUDA-graph decode; torch.compile of the layer parts unless --compile none)
baseline:  `model.generate` on the same left-padded batch, same sampling settings
limit:     memory bandwidth: each decode step reads the text weights once plus every row's K/V
           (at the mean context, prompt + half the response); B tokens per step
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch

from common import hbm_bytes_per_s, qwen25vl_7b_config, record, table  # noqa: E402  (bench/ is the script's folder)

IMAGE_GRID = (1, 36, 36)  # 504x504 pixels: 1296 patches, 324 tokens after the 2x2 merge
VISION_START, IMAGE_PAD, VISION_END, ENDOFTEXT, IM_END = 151652, 151655, 151653, 151643, 151645


def build_model():
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(qwen25vl_7b_config(), dtype=torch.bfloat16)
    model.generation_config.eos_token_id = [IM_END, ENDOFTEXT]
    model.generation_config.pad_token_id = ENDOFTEXT
    return model.eval()


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer with the real model's special-token ids (no tokenizer files are reachable).

    The engine uses the tokenizer for EOS/pad ids, the vision tokens it forbids, and decoding.
    """
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from ovlt_rl.models.tiny import SPECIAL_TOKENS

    vocab = {f"t{i}": i for i in range(ENDOFTEXT)}
    for k, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = ENDOFTEXT + k
    for i in range(ENDOFTEXT + len(SPECIAL_TOKENS), vocab_size):
        vocab[f"<|extra_{i}|>"] = i
    tok = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def make_prompts(n: int, prompt_tokens: int, seed: int) -> list[dict]:
    """Prompt items as PromptDataset gives them: one image, then random text; 960-1024 tokens for 1024."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n_img = IMAGE_GRID[1] * IMAGE_GRID[2] // 4
    out = []
    for _ in range(n):
        length = prompt_tokens - rng.randint(0, prompt_tokens // 16)
        ids = torch.cat([torch.tensor([VISION_START]), torch.full((n_img,), IMAGE_PAD), torch.tensor([VISION_END]),
                         torch.randint(0, 150000, (length - n_img - 2,), generator=g)])
        out.append({"input_ids": ids, "mm_token_type_ids": (ids == IMAGE_PAD).long(),
                    "pixel_values": torch.randn(IMAGE_GRID[1] * IMAGE_GRID[2], 1176, generator=g),
                    "image_grid_thw": torch.tensor([IMAGE_GRID])})
    return out


def bandwidth_limit(model, batch: int, context: float) -> dict:
    """Tokens/s if a decode step only read the text weights once and each row's K/V (bf16) at `context` tokens."""
    text = model.model.language_model
    cfg = model.config.get_text_config()
    weight_bytes = sum(p.numel() * p.element_size() for n, p in text.named_parameters() if "embed_tokens" not in n)
    weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2 * batch * context
    bw = hbm_bytes_per_s()
    step_bytes = weight_bytes + kv_bytes
    return {"step_gbytes": step_bytes / 1e9, "weight_gbytes": weight_bytes / 1e9, "kv_gbytes": kv_bytes / 1e9,
            "hbm_bytes_per_s": bw, "limit_tokens_per_s": batch / (step_bytes / bw) if bw else None}


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_ours(engine, prompts, n: int, new_tokens: int, repeats: int) -> dict:
    from ovlt_rl.engines.base import SamplingParams

    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, logprobs=False, seed=0)
    _, first = timed(lambda: engine.generate(prompts, params))  # captures the graph (and compiles)
    times, tokens, stats = [], 0, []
    for _ in range(repeats):
        groups, secs = timed(lambda: engine.generate(prompts, params))
        times.append(secs)
        stats.append(engine.fast.last_stats)
        tokens = sum(len(g.token_ids) for grp in groups for g in grp)
    secs = statistics.median(times)
    st = stats[times.index(secs)] if secs in times else stats[0]
    return {"tokens": tokens, "seconds": secs, "all_seconds": times, "first_call_seconds": first,
            "prefill_seconds": st["prefill_s"], "decode_seconds": st["decode_s"], "steps": st["steps"],
            "tokens_per_s": tokens / secs, "decode_tokens_per_s": (tokens - len(prompts) * n) / st["decode_s"],
            "ms_per_step": 1000 * st["decode_s"] / max(st["steps"] - 1, 1), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def run_generate(model, engine, prompts, n: int, new_tokens: int) -> dict:
    """Plain `model.generate` on the whole batch (the engine only supplies collation and token ids)."""
    from ovlt_rl.engines.hf import batch_prompts

    inputs = batch_prompts(prompts, engine.pad_id, engine.device)
    kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=engine.pad_id, num_return_sequences=n,
                  eos_token_id=sorted(engine.eos_ids), suppress_tokens=engine.forbidden)
    _, prefill = timed(lambda: model.generate(**inputs, max_new_tokens=1, **kwargs))
    torch.manual_seed(0)
    seqs, secs = timed(lambda: model.generate(**inputs, max_new_tokens=new_tokens, **kwargs))
    tokens = 0
    for row in seqs[:, inputs["input_ids"].shape[1]:].tolist():
        stop = next((k + 1 for k, t in enumerate(row) if t in engine.eos_ids), len(row))
        tokens += stop
    return {"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs, "prefill_seconds": prefill,
            "decode_tokens_per_s": (tokens - len(prompts) * n) / max(secs - prefill, 1e-9),
            "ms_per_step": 1000 * (secs - prefill) / max(new_tokens - 1, 1)}


def warm_up_generate(model, engine) -> None:
    """One small `generate` so the first measured batch doesn't pay CUDA/cuBLAS initialisation."""
    from ovlt_rl.engines.hf import batch_prompts

    inputs = batch_prompts(make_prompts(2, 512, seed=0), engine.pad_id, engine.device)
    model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=engine.pad_id)


def check_agreement(model, fast, n_prompts: int = 8, new_tokens: int = 32) -> dict:
    """Greedy tokens of the fast path vs `generate` on prompts of different lengths, and the fast path's
    in-loop log-probs vs teacher-forced ones (bf16: near-ties may flip a token, after which rows diverge)."""
    from ovlt_rl.engines.base import SamplingParams
    from ovlt_rl.engines.hf import HFEngine

    plain = HFEngine("bench", model=model, processor=SimpleNamespace(tokenizer=fast.tokenizer), device=fast.device,
                     fast_decode="off", micro_batch_size=n_prompts)
    prompts = make_prompts(n_prompts, 512, seed=7)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=new_tokens, logprobs=True)
    want = plain.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=new_tokens, logprobs=False))
    got = fast.generate(prompts, params)
    same_prefix = []
    for w, g in zip(want, got):
        a, b = w[0].token_ids, g[0].token_ids
        same_prefix.append(next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    ref = plain.compute_logprobs(prompts, [g[0].token_ids for g in got])
    diffs = [abs(x - y) for g, r in zip(got, ref) for x, y in zip(g[0].logprobs, r)]
    fast.fast.release()
    return {"rows": n_prompts, "new_tokens": new_tokens, "rows_identical": sum(s == new_tokens for s in same_prefix),
            "same_prefix": same_prefix, "logprob_max_abs_diff": max(diffs), "logprob_mean_abs_diff": sum(diffs) / len(diffs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--n", type=int, default=1, help="samples per prompt (batch/n prompts)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls of ours after the warm-up call")
    ap.add_argument("--compile", default="inductor", help="torch.compile backend for the decode step, or none")
    ap.add_argument("--no-baseline", action="store_true", help="skip plain generate")
    ap.add_argument("--check", action="store_true", help="greedy agreement with generate first")
    ap.add_argument("--no-record", action="store_true", help="print only, don't append to results.jsonl")
    args = ap.parse_args()
    from ovlt_rl.engines.hf import HFEngine

    t0 = time.perf_counter()
    model = build_model()
    tok = build_tokenizer(model.config.get_text_config().vocab_size)
    print(f"model built in {time.perf_counter() - t0:.1f} s on {torch.cuda.get_device_name(0)}", flush=True)
    # The engine reads only the processor's tokenizer; prompts come as token ids and pixel values.
    processor = SimpleNamespace(tokenizer=tok)
    engine = HFEngine("bench", model=model, processor=processor, device="cuda", fast_decode="on",
                      decode_compile=None if args.compile == "none" else args.compile, micro_batch_size=max(args.batches))
    agreement = None
    if args.check:  # eager decode step: the same computation, without a compile for the check's batch size
        agreement = check_agreement(model, HFEngine("bench", model=model, processor=processor, device="cuda",
                                                    fast_decode="on", decode_compile=None))
        print("greedy agreement with generate:", agreement, flush=True)
    if not args.no_baseline:
        warm_up_generate(model, engine)
    rows = []
    for batch in args.batches:
        if batch % args.n:
            raise SystemExit(f"--batches: {batch} is not a multiple of --n {args.n}")
        prompts = make_prompts(batch // args.n, args.prompt_tokens, seed=batch)
        context = sum(len(p["input_ids"]) for p in prompts) / len(prompts) + args.new_tokens / 2
        limit = bandwidth_limit(model, batch, context)
        base = None
        if not args.no_baseline:
            torch.cuda.empty_cache()
            try:
                base = run_generate(model, engine, prompts, args.n, args.new_tokens)
            except torch.cuda.OutOfMemoryError as e:
                print(f"generate at batch {batch}: out of memory ({e})", flush=True)
                base = {"oom": True, "tokens_per_s": None}
            torch.cuda.empty_cache()
            rows.append({"batch": batch, "run": "baseline: model.generate", "tokens/s": base["tokens_per_s"],
                         "seconds": base.get("seconds"), "decode tokens/s": base.get("decode_tokens_per_s"),
                         "ms/step": base.get("ms_per_step"), "prefill s": base.get("prefill_seconds"),
                         "limit tokens/s": limit["limit_tokens_per_s"]})
            print(table(rows[-1:], list(rows[-1])), flush=True)
        torch.cuda.reset_peak_memory_stats()
        ours = run_ours(engine, prompts, args.n, args.new_tokens, args.repeats)
        engine.fast.release()
        speedup = ours["tokens_per_s"] / base["tokens_per_s"] if base and base["tokens_per_s"] else None
        decode_speedup = ours["decode_tokens_per_s"] / base["decode_tokens_per_s"] if speedup else None
        name = "ours: HFEngine fast path" + ("" if args.compile == "none" else f" (compile {args.compile})")
        rows.append({"batch": batch, "run": name, "tokens/s": ours["tokens_per_s"], "seconds": ours["seconds"],
                     "decode tokens/s": ours["decode_tokens_per_s"], "ms/step": ours["ms_per_step"],
                     "prefill s": ours["prefill_seconds"],
                     "speedup": speedup, "decode speedup": decode_speedup, "limit tokens/s": limit["limit_tokens_per_s"],
                     "peak GiB": ours["peak_gib"]})
        print(table(rows[-1:], list(rows[-1])), flush=True)
        if not args.no_record:
            record("rollout", n_gpu=1,
                   config={"model": "Qwen2.5-VL-7B-shaped", "batch": batch, "n": args.n, "prompt_tokens": f"{args.prompt_tokens - args.prompt_tokens // 16}-{args.prompt_tokens}",
                           "image_grid": IMAGE_GRID, "new_tokens": args.new_tokens, "sampling": "temperature 1.0, top_p 1.0",
                           "dtype": "bf16", "decode_compile": args.compile, "repeats": args.repeats},
                   figures={"tokens_per_s": ours["tokens_per_s"], "baseline_tokens_per_s": base and base["tokens_per_s"],
                            "speedup_vs_generate": speedup, "decode_tokens_per_s": ours["decode_tokens_per_s"],
                            "baseline_decode_tokens_per_s": base and base.get("decode_tokens_per_s"),
                            "decode_speedup_vs_generate": decode_speedup,
                            "seconds": ours["seconds"], "all_seconds": ours["all_seconds"],
                            "prefill_seconds": ours["prefill_seconds"], "decode_seconds": ours["decode_seconds"],
                            "ms_per_step": ours["ms_per_step"], "first_call_seconds": ours["first_call_seconds"],
                            "greedy_agreement": agreement,
                            "generated_tokens": ours["tokens"], "peak_gib": ours["peak_gib"], **limit},
                   baseline={"name": "transformers model.generate, same batch and sampling", **(base or {})})
    print(table(rows, ["batch", "run", "tokens/s", "seconds", "decode tokens/s", "ms/step", "prefill s", "speedup",
                       "decode speedup", "limit tokens/s", "peak GiB"]))


if __name__ == "__main__":
    main()
