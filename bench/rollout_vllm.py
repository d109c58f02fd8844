"""vLLM rollout benchmark: ovlt's vLLM engine (`VLLMEngine`) against vLLM used directly, same engine
arguments, same prompts, same machine, for a Qwen2.5-VL-7B-shaped model (random weights) on one GPU.

    python bench/rollout_vllm.py [--shapes 128x1 32x4 256x1 64x4] [--new-tokens 256] [--model-dir DIR]

A shape PxN is P prompts x N samples. Each prompt holds one 504x504 image (324 image tokens) and
random words up to 960-1024 tokens in all; every sequence generates up to `--new-tokens` tokens at
temperature 1 with the sampled token's log-prob returned (GRPO's request; EOS is improbable with
random weights, and only tokens really generated are counted). tokens/s: generated tokens over the
whole `generate` call, prefill (vision tower included) plus decode; the median of `--repeats` calls
after one warm-up call.

ours:    VLLMEngine(cfg, model_dir).generate(prompt items, SamplingParams)  (what a rollout worker runs)
direct:  vllm.LLM(**the same engine arguments).generate(the same prompts, vllm.SamplingParams(...))
ideal:   prefill at peak bf16 FLOP/s (2 x parameters x prompt tokens, each prompt prefilled once and
         shared by its N samples, vision tower included; attention FLOPs left out) plus decode at
         HBM bandwidth (each step reads the text weights once and every row's K/V at the mean context)

Each run is a subprocess of its own (a fresh CUDA context: vLLM does not give its memory back to a
process that keeps running). The model folder (16.6 GB of bf16 safetensors, a word-level tokenizer
with Qwen's special-token ids, Qwen2.5-VL's image processor) is built once into --model-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import PEAK_BF16_TFLOPS, hbm_bytes_per_s, record, table  # noqa: E402  (bench/ is the script's folder)

IMAGE_SIDE, IMAGE_TOKENS, PATCHES = 504, 324, 1296


def build_model_dir(path: Path) -> None:
    """The 7B-shaped model as an HF folder vLLM loads: weights, tokenizer, processor, chat template."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from rollout import build_model, build_tokenizer

    model = build_model()
    tok = build_tokenizer(model.config.get_text_config().vocab_size)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # prompts are words "t123"
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def make_prompts(n: int, seed: int, prompt_tokens: int = 1024) -> list[dict]:
    """PromptDataset-like items: chat-templated text with one image placeholder, and the PIL image."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = prompt_tokens - rng.randint(0, prompt_tokens // 16) - IMAGE_TOKENS - 10  # 10: template tokens
        text = " ".join(f"t{rng.randrange(150000)}" for _ in range(words))
        image = Image.fromarray(nrng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
        prompt = f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
        out.append({"prompt_text": prompt, "images": [image]})
    return out


def engine_config(model_dir: str, new_tokens: int, extra: list[str]):
    from ovlt.config import load_config

    return load_config("grpo", ["data.train_files=[x]", "rollout.engine=vllm", "data.max_prompt_length=1100",
                                f"data.max_response_length={new_tokens}", "trainer.device=cuda", f"model.path={model_dir}",
                                *extra])


def run_variant(variant: str, model_dir: str, shapes: list[tuple[int, int]], new_tokens: int, repeats: int,
                extra: list[str]) -> dict:
    """In this (fresh) process: start one engine, time every shape; returns {shape: figures}."""
    import torch

    from ovlt_rl.engines.base import SamplingParams
    from ovlt_rl.engines.vllm_engine import VLLMEngine, build_prompt, engine_kwargs, vllm_sampling_kwargs

    cfg = engine_config(model_dir, new_tokens, extra)
    t0 = time.perf_counter()
    if variant == "ours":
        engine = VLLMEngine(cfg, model_dir)

        def generate(prompts, params):
            groups = engine.generate(prompts, params)
            return sum(len(g.token_ids) for grp in groups for g in grp)
    else:
        import dataclasses

        from vllm import LLM
        from vllm import SamplingParams as VSamplingParams
        from vllm.engine.arg_utils import EngineArgs

        from ovlt_rl.engines.base import forbidden_token_ids

        llm = LLM(**engine_kwargs(cfg, model_dir, False, {f.name for f in dataclasses.fields(EngineArgs)}))
        forbidden = forbidden_token_ids(llm.get_tokenizer())

        def generate(prompts, params):
            outs = llm.generate([build_prompt(p, 1) for p in prompts], VSamplingParams(**vllm_sampling_kwargs(params, forbidden)),
                                use_tqdm=False)
            return sum(len(o.token_ids) for r in outs for o in r.outputs)
    start = time.perf_counter() - t0
    results = {"engine_start_s": start}
    for p, n in shapes:
        prompts = make_prompts(p, seed=p * 1000 + n)
        params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, logprobs=True, seed=None)
        generate(prompts, params)  # warm-up: this batch size's CUDA graphs, caches
        times, tokens = [], 0
        for _ in range(repeats):
            # New prompts each call (same shapes): the prefix cache must not turn prefill into a lookup.
            prompts = make_prompts(p, seed=p * 1000 + n + 1 + len(times))
            torch.cuda.synchronize()
            t = time.perf_counter()
            tokens = generate(prompts, params)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        secs = statistics.median(times)
        results[f"{p}x{n}"] = {"tokens": tokens, "seconds": secs, "all_seconds": times, "tokens_per_s": tokens / secs}
        print(variant, f"{p}x{n}", results[f"{p}x{n}"], flush=True)
    return results


def ideal_tokens_per_s(model_dir: str, prompts: int, n: int, new_tokens: int, prompt_tokens: float) -> float:
    """Generated tokens over (prefill at peak FLOP/s + decode at HBM bandwidth); see the module docstring."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    t, v = c.text_config, c.vision_config
    h, inter, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    head = h // t.num_attention_heads
    kv_dim = t.num_key_value_heads * head
    per_layer = h * (h + 2 * kv_dim) + h * h + 3 * h * inter  # q, k, v, o, gate/up/down
    text_params = layers * per_layer + h * t.vocab_size  # + lm_head (the embedding is a lookup)
    vh, vi = v.hidden_size, v.intermediate_size
    vision_params = v.depth * (4 * vh * vh + 3 * vh * vi) + (vh * 4) * (vh * 4) + (vh * 4) * v.out_hidden_size
    flops = 2 * text_params * prompts * prompt_tokens + 2 * vision_params * prompts * PATCHES
    batch = prompts * n
    context = prompt_tokens + new_tokens / 2
    step_bytes = 2 * text_params + 2 * layers * kv_dim * 2 * batch * context  # bf16 weights + K and V
    bw = hbm_bytes_per_s()
    if bw is None:
        return float("nan")
    seconds = flops / (PEAK_BF16_TFLOPS * 1e12) + new_tokens * step_bytes / bw
    return batch * new_tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["128x1", "32x4", "256x1", "64x4"], help="PROMPTSxN")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model-dir", default="/tmp/ovlt-bench-qwen25vl-7b")
    ap.add_argument("--variants", nargs="+", default=["direct", "ours"])
    ap.add_argument("--set", nargs="*", default=[], help="extra ovlt config overrides for the engine (both variants)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes]
    if args.child:  # one variant in this process; results as the last line
        res = run_variant(args.child, args.model_dir, shapes, args.new_tokens, args.repeats, args.set)
        print("RESULT " + json.dumps(res), flush=True)
        return
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        t = time.perf_counter()
        build_model_dir(model_dir)
        print(f"model folder built in {time.perf_counter() - t:.0f} s: {model_dir}", flush=True)
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--model-dir", str(model_dir), "--new-tokens",
               str(args.new_tokens), "--repeats", str(args.repeats), "--shapes", *args.shapes, "--set", *args.set]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        print(out.stdout[-4000:], flush=True)
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("RESULT ")), None)
        if out.returncode or line is None:
            raise SystemExit(f"{variant} failed (exit {out.returncode})")
        results[variant] = json.loads(line[len("RESULT "):])
    import vllm

    rows = []
    for p, n in shapes:
        key = f"{p}x{n}"
        ideal = ideal_tokens_per_s(str(model_dir), p, n, args.new_tokens, prompt_tokens=1024 - 1024 / 32)
        row = {"sequences": p * n, "shape": key, "ideal tok/s": ideal}
        for v in args.variants:
            row[f"{v} tok/s"] = results[v][key]["tokens_per_s"]
        if {"ours", "direct"} <= set(args.variants):
            row["ours/direct"] = row["ours tok/s"] / row["direct tok/s"]
        if "ours" in args.variants:
            row["ours/ideal"] = row["ours tok/s"] / ideal
        rows.append(row)
        if not args.no_record:
            record("rollout_vllm", n_gpu=1,
                   config={"model": "Qwen2.5-VL-7B-shaped", "prompts": p, "n": n, "new_tokens": args.new_tokens,
                           "prompt_tokens": "960-1024 (324 image tokens)", "sampling": "temperature 1.0, logprobs",
                           "vllm": vllm.__version__, "engine_overrides": args.set, "repeats": args.repeats},
                   figures={"tokens_per_s": row.get("ours tok/s"), "ideal_tokens_per_s": ideal,
                            "fraction_of_ideal": row.get("ours/ideal"), "ours_over_direct": row.get("ours/direct"),
                            "runs": {v: results[v][key] for v in args.variants},
                            "engine_start_s": {v: results[v]["engine_start_s"] for v in args.variants}},
                   baseline={"name": "vLLM used directly, same engine arguments", **results.get("direct", {}).get(key, {})})
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
