"""Whole GRPO step benchmark: the time breakdown of real GRPO steps (ovlt's controller, Ray
workers, FSDP2 policy + reference, hf or vLLM rollout engine, reward, weight sync) and tokens/s/GPU.

    python bench/grpo_step.py --model 7b --policy-gpus 2 --rollout-gpus 2 --prompts 16 --steps 2
    python bench/grpo_step.py --model 3b --policy-gpus 1 --rollout-gpus 1 --gpus-per-worker 0.5 --engine vllm \
        --extra rollout.gpu_memory_utilization=0.3 actor.offload_optimizer=true   # one GPU, colocated

The paper's GRPO settings scaled to the machine: n=5 samples per prompt, temperature 1.0, top-p
0.99, images of 504x504 (324 image tokens, the 262144-pixel budget), KL loss (low_var_kl, 1e-2)
against a reference copy, clip 0.2/0.3, lr 1e-6, and four policy updates per step (the paper's
rollout batch 512 / global batch 128), each a mini-batch of a quarter of the step's samples.
Responses are capped at `--max-response` tokens (the paper: 2048).

The model: Qwen2.5-VL's published architecture with random weights (`--model 7b`: 7B's text and
vision shapes; `3b`: 3B's) and the tiny model's locally trained tokenizer, so the vocabulary has
~1k tokens instead of 152k (no hub is reachable; the LM head and embeddings are ~1% of the
parameters instead of ~13%). A random model samples near-uniform tokens: a response ends when an
end token comes up (~2 in 1k per token) or at the cap, which gives mixed lengths, and the reward
is 0 for every sample (advantages 0: the update still runs every micro-batch, the loss is 0).

Timings come from the controller's own per-phase metrics (metrics.jsonl): generate, reward,
old and reference log-probs, update, weight sync, and the whole step. The first step includes
warm-ups (CUDA graph capture, first NCCL calls) and is reported apart. tokens/s/GPU = (prompt +
response tokens of the step) / step seconds / all GPUs (policy + rollout). Checkpoint writing is
switched off for the benchmark (the step does not include it; with the run's defaults the last
step would write the 7B optimizer state, ~100 GB).

`--model tiny --device cpu` runs the same code on the tiny model (smoke test).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from common import PEAK_BF16_TFLOPS, GpuMemoryPeak, hbm_bytes_per_s, record, table  # noqa: E402  (puts the repo on sys.path)

SHAPES = {
    # Qwen2.5-VL-7B-Instruct's and -3B-Instruct's published text shapes; both use the same vision tower.
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944),
    "3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008),
}
VISION = dict(vision_depth=32, vision_hidden_size=1280, vision_intermediate_size=3420, vision_num_heads=16)


def build_model(kind: str, out: Path) -> str:
    """A random Qwen2.5-VL of the given shape with the tiny model's tokenizer and processor."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from ovlt_rl.models.loading import load_processor, resolve_model_path
    from ovlt_rl.models.tiny import build_tiny_model, tiny_config

    if kind == "tiny":
        return resolve_model_path("tiny")
    if (out / "config.json").exists():
        return str(out)
    tok_dir = Path(tempfile.mkdtemp()) / "tok"
    build_tiny_model(tok_dir)
    processor = load_processor(str(tok_dir))
    config = tiny_config(processor.tokenizer, **SHAPES[kind], **VISION, mrope_section=(16, 24, 24),
                         max_position_embeddings=32768, tie_word_embeddings=False)
    config.vision_config.fullatt_block_indexes = [7, 15, 23, 31]  # as in the real vision tower
    with torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig.from_pretrained(tok_dir)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, out)
    shutil.rmtree(tok_dir.parent, ignore_errors=True)
    return str(out)


def write_prompts(path: Path, n: int, size: int) -> Path:
    """n counting questions, each with one size x size image of coloured circles."""
    from PIL import Image, ImageDraw

    from ovlt_rl.data.schema import make_row, write_rows

    rng = random.Random(0)
    rows = []
    for i in range(n):
        k = rng.randint(1, 6)
        img = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(img)
        for _ in range(k):
            x, y, r = rng.randint(0, size - 40), rng.randint(0, size - 40), rng.randint(8, 20)
            draw.ellipse((x, y, x + 2 * r, y + 2 * r), fill=rng.choice(["red", "blue", "green"]))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        rows.append(make_row(data_source="bench/count", question="<image>How many circles are in the image?",
                             ground_truth=str(k), images=[buf.getvalue()]))
    return write_rows(rows, path)


def overrides(args, model_dir: str, data: Path, out: Path) -> list[str]:
    samples = args.prompts * args.n
    per_update = samples // 4  # four policy updates per step, as the paper's 512 / 128
    gpu = args.device == "cuda"
    return [
        f"model.path={model_dir}", f"model.dtype={'bf16' if gpu else 'fp32'}", "model.gradient_checkpointing=true",
        f"data.train_files=[{data}]", f"data.max_pixels={args.image_size ** 2}", "data.max_prompt_length=2048",
        f"data.max_response_length={args.max_response}", f"data.rollout_batch_size={args.prompts}",
        f"rollout.engine={args.engine}", f"rollout.n={args.n}", "rollout.temperature=1.0", "rollout.top_p=0.99", f"rollout.num_workers={args.rollout_gpus}",
        f"rollout.gpus_per_worker={args.gpus_per_worker if gpu else 0}", f"rollout.micro_batch_size={samples}",
        f"actor.num_workers={args.policy_gpus}", f"actor.gpus_per_worker={args.gpus_per_worker if gpu else 0}",
        f"actor.global_batch_size={per_update}", f"actor.micro_batch_size={per_update // args.policy_gpus}",
        f"actor.max_tokens_per_micro_batch={args.max_tokens}", f"actor.logprob_max_tokens_per_micro_batch={2 * args.max_tokens}",
        "actor.lr=1e-6", "actor.weight_decay=1e-2", "actor.clip_ratio_low=0.2", "actor.clip_ratio_high=0.3",
        "actor.use_kl_loss=true", "actor.kl_coef=1e-2", "actor.kl_type=low_var_kl",
        "reward.fn=openvlthinker", "reward.num_workers=4",
        f"trainer.device={args.device}", f"trainer.total_steps={args.steps}", "trainer.val_every=0",
        "trainer.val_before_train=false", "trainer.save_hf=false", "trainer.loggers=[console,jsonl]", f"trainer.output_dir={out}",
        *args.extra,
    ]


PHASES = ["generate", "reward", "old_logprob", "ref_logprob", "update", "offload", "sync"]


def param_counts(model_dir: str) -> dict[str, int]:
    """Parameters of the text stack that run for every token (LM head included, embedding lookup
    not), of the vision tower, and of everything (the bytes that generation reads per step)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(model_dir))
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    # A tied LM head is the embedding matrix, and it does run for every token.
    embed = 0 if model.config.get_text_config().tie_word_embeddings else model.get_input_embeddings().weight.numel()
    return {"text": total - vision - embed, "vision": vision, "total": total}


def phase_limits(params: dict[str, int], m: dict, args, image_tokens: int) -> dict[str, float]:
    """Each phase's least possible seconds on this machine, from its work and the GPU's limits
    (dense bf16 FLOP/s, HBM bandwidth); attention FLOPs are left out, so the limits are low and the
    reported fractions (limit / measured) conservative.

    generate: prompt prefill once per prompt (n samples share it) + 2 N FLOPs per response token,
      or reading the weights once per decode step for the mean response length, whichever is longer;
    old/ref log-probs: a forward over every sample (2 N per token; the vision tower per sample);
    update: forward + backward (3x the forward); sync (colocated): reading and writing the bf16
      weights once in HBM.
    """
    samples = args.prompts * args.n
    resp = m["response_length/mean"] * samples
    prompt_per_sample = (m["throughput/tokens_per_s"] * m["timing/step_s"] - resp) / samples
    patches = 4 * image_tokens  # 2x2 patches merge into one image token
    peak, bw = PEAK_BF16_TFLOPS * 1e12, hbm_bytes_per_s(default="H100")
    # Colocated workers (gpus_per_worker < 1) take turns on whole GPUs: each phase has its GPUs to itself.
    policy_gpus = args.policy_gpus * max(1.0, args.gpus_per_worker)
    rollout_gpus = args.rollout_gpus * max(1.0, args.gpus_per_worker)
    forward = 2 * params["text"] * samples * (prompt_per_sample + m["response_length/mean"]) + 2 * params["vision"] * patches * samples
    prefill = 2 * params["text"] * args.prompts * prompt_per_sample + 2 * params["vision"] * patches * args.prompts
    limits = {
        "generate": max((prefill + 2 * params["text"] * resp) / (peak * rollout_gpus),
                        # every worker steps through the longest responses reading all its weights (TP splits them)
                        2 * params["text"] * m["response_length/mean"] / (bw * max(1.0, args.gpus_per_worker))),
        "old_logprob": forward / (peak * policy_gpus),
        "ref_logprob": forward / (peak * policy_gpus),
        "update": 3 * forward / (peak * policy_gpus),
    }
    if args.gpus_per_worker < 1:
        limits["sync"] = 2 * 2 * params["total"] / bw
    return limits


def main() -> None:
    from ovlt.cli import configure_logging

    configure_logging()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["7b", "3b", "tiny"], default="7b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--policy-gpus", type=int, default=2)
    ap.add_argument("--rollout-gpus", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (the paper: 512)")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-response", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=16384, help="actor.max_tokens_per_micro_batch")
    ap.add_argument("--image-size", type=int, default=504)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--gpus-per-worker", type=float, default=1.0,
                    help="< 1 shares GPUs: 0.5 with one policy and one rollout worker is the colocated one-GPU step")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="rollout.engine (vllm colocated: sleep mode, CUDA IPC sync)")
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides")
    ap.add_argument("--workdir", default="/tmp/ovlt-bench/grpo_step")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from ovlt_rl.loopback import apply as keep_on_loopback

    keep_on_loopback([])  # a local Ray on 127.0.0.1: before anything imports Ray
    if args.prompts * args.n % (4 * args.policy_gpus):
        raise SystemExit(f"--prompts x --n ({args.prompts * args.n}) must divide into 4 updates over {args.policy_gpus} policy ranks")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = build_model(args.model, work / f"model_{args.model}")
    data = write_prompts(work / "rl.parquet", args.prompts * (args.steps + 1), args.image_size)
    print(f"model and data ready in {time.perf_counter() - t0:.0f} s: {model_dir}")

    from ovlt.config import load_config
    from ovlt_rl import controller
    from ovlt_rl.driver.run import Run

    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("grpo", overrides(args, model_dir, data, out))
    # The benchmark times GRPO steps; checkpoints are not part of a step (see the docstring).
    Run.save_checkpoint = lambda self, step, driver_state: None
    t0 = time.perf_counter()
    with GpuMemoryPeak() as memory:
        controller.run_grpo(cfg)
    wall = time.perf_counter() - t0

    steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m.get("step", 0) > 0]
    gpus = (args.policy_gpus + args.rollout_gpus) * args.gpus_per_worker
    rows, per_step = [], []
    for m in steps:
        phases = {p: m.get(f"timing/{p}_s", 0.0) for p in PHASES}
        tokens = m["throughput/tokens_per_s"] * m["timing/step_s"]
        per_step.append({"step": m["step"], "seconds": m["timing/step_s"], **{f"{p}_s": v for p, v in phases.items()},
                         "other_s": m["timing/step_s"] - sum(phases.values()), "tokens": tokens,
                         "tokens_per_s_per_gpu": m["throughput/tokens_per_s"] / (gpus if args.device == "cuda" else 1),
                         "response_length_mean": m["response_length/mean"],
                         "response_clip_ratio": m["response_length/clip_ratio"]})
        rows.append({"step": m["step"], "step s": m["timing/step_s"], **{f"{p} s": v for p, v in phases.items()},
                     "tokens": tokens, "tokens/s/GPU": per_step[-1]["tokens_per_s_per_gpu"],
                     "resp len": m["response_length/mean"]})
    print(table(rows, ["step", "step s", *[f"{p} s" for p in PHASES], "tokens", "tokens/s/GPU", "resp len"]))
    print(f"whole run (start-up, {len(steps)} steps, shutdown): {wall:.0f} s")
    if args.device != "cuda":
        return
    limits = phase_limits(param_counts(model_dir), steps[-1], args, image_tokens=(args.image_size // 28) ** 2)
    last = per_step[-1]
    fractions = {p: limits[p] / last[f"{p}_s"] for p in limits if last[f"{p}_s"] > 0}
    print(table([{"phase": p, "measured s": last[f"{p}_s"], "limit s": limits[p], "fraction of limit": fractions.get(p, 0.0)}
                 for p in limits], ["phase", "measured s", "limit s", "fraction of limit"]))
    print(f"peak GPU memory in use (all processes on GPU 0, sampled every 0.2 s): {memory.peak_gib:.1f} GiB")
    if args.no_record:
        return
    record("grpo_step", n_gpu=int(gpus),
           config={"model": f"Qwen2.5-VL-{args.model}-shaped, tokenizer vocabulary {len(__import__('transformers').AutoTokenizer.from_pretrained(model_dir))}",
                   "policy_gpus": args.policy_gpus, "rollout_gpus": args.rollout_gpus, "prompts_per_step": args.prompts,
                   "n": args.n, "max_response_tokens": args.max_response, "updates_per_step": 4,
                   "max_tokens_per_micro_batch": args.max_tokens, "image": f"{args.image_size}x{args.image_size}",
                   "rollout_engine": args.engine, "gpus_per_worker": args.gpus_per_worker, "kl_loss": "low_var_kl 1e-2", "steps": args.steps},
           figures={"seconds": last["seconds"], "tokens_per_s_per_gpu": last["tokens_per_s_per_gpu"],
                    "limit_s": limits, "fraction_of_limit": fractions, "peak_gpu_memory_gib": memory.peak_gib,
                    "breakdown_s": {p: last[f"{p}_s"] for p in PHASES + ["other"]}, "tokens_per_step": last["tokens"],
                    "response_length_mean": last["response_length_mean"], "steps": per_step},
           baseline={"name": "EasyR1, Qwen2.5-VL-7B GRPO, 8xH100, paper-like settings (published)",
                     "tokens_per_s_per_gpu": [1600, 2000], "seconds_per_step": [120, 145]})


if __name__ == "__main__":
    main()
