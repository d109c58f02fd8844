"""Actor update benchmark: tokens/s/GPU and MFU of ovlt's GRPO policy update (FSDP2, GRPO loss,
AdamW step and FSDP communication included) for a Qwen2.5-VL-7B-shaped model at GRPO-like shapes.

    python bench/actor_update.py --gpus 2 4 [--samples-per-rank 8] [--micro 2]

Shapes: a ~500-token prompt holding one 504x504 image (324 image tokens, the paper's 262144-pixel
budget) and a response of 100-2048 tokens (uniform, seeded). MFU = 6 * N * tokens / time /
(989 TFLOP/s * GPUs), counting real tokens only (padding is waste, not work).
Baseline (same run, same samples): plain transformers forward+backward of the same model with
padded batches on one GPU, bf16, gradient checkpointing, no optimizer, no FSDP.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp

from common import PEAK_BF16_TFLOPS, qwen25vl_7b_config, record, table  # noqa: E402

MODEL_DIR = os.environ.get("OVLT_BENCH_MODEL", "/tmp/ovlt-bench/qwen2_5_vl_7b_random")
IMAGE_GRID = (1, 36, 36)  # 504x504 pixels: 1296 patches, 324 tokens after the 2x2 merge
PROMPT_TOKENS = 500


def build_model_dir() -> str:
    """Save a random 7B-shaped model once (bf16 safetensors), so workers load it like a checkpoint."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if os.path.exists(os.path.join(MODEL_DIR, "config.json")):
        return MODEL_DIR
    with torch.device("cuda", 0):
        model = Qwen2_5_VLForConditionalGeneration._from_config(qwen25vl_7b_config(), dtype=torch.bfloat16)
    model.generation_config.pad_token_id = 151643
    model.config.pad_token_id = 151643
    tmp = MODEL_DIR + ".tmp"
    model.save_pretrained(tmp)
    os.replace(tmp, MODEL_DIR)
    del model
    torch.cuda.empty_cache()
    return MODEL_DIR


def make_samples(n: int, seed: int) -> list[dict]:
    """GRPO samples: prompt with one image + a response of 100..2048 tokens, advantages and old log-probs."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n_img = IMAGE_GRID[1] * IMAGE_GRID[2] // 4
    out = []
    for _ in range(n):
        resp = rng.randint(100, 2048)
        text = PROMPT_TOKENS - n_img - 2
        ids = torch.cat([
            torch.tensor([151652]), torch.full((n_img,), 151655), torch.tensor([151653]),
            torch.randint(0, 150000, (text + resp,), generator=g),
        ])
        mm = (ids == 151655).long()
        L = len(ids)
        loss_mask = torch.zeros(L)
        loss_mask[PROMPT_TOKENS:] = 1
        out.append({
            "input_ids": ids, "mm_token_type_ids": mm, "loss_mask": loss_mask,
            "pixel_values": torch.randn(IMAGE_GRID[1] * IMAGE_GRID[2], 1176, generator=g),
            "image_grid_thw": torch.tensor([IMAGE_GRID]),
            "advantages": loss_mask * (rng.random() - 0.5), "old_logprobs": -torch.rand(L, generator=g) * loss_mask,
        })
    return out


def _rank(rank, world, port, samples_per_rank, micro, steps, q, extra=()):
    from ovlt_rl.config import load_config
    from ovlt_rl.workers.policy import PolicyWorker

    # One GPU per process, as Ray gives each policy actor: the worker then uses cuda:0.
    os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)
    os.environ["OVLT_TORCH_THREADS"] = "4"
    import torch.distributed as dist

    cfg = load_config("grpo", [
        f"model.path={MODEL_DIR}", "model.gradient_checkpointing=true", "model.dtype=bf16", "trainer.device=cuda",
        "data.train_files=[x]", f"actor.num_workers={world}", "actor.use_kl_loss=false", "reference.enabled=false",
        f"actor.micro_batch_size={micro}", f"actor.global_batch_size={samples_per_rank * world}", "rollout.n=1",
        f"data.rollout_batch_size={samples_per_rank * world}", "actor.lr=1e-6", *extra,
    ])
    w = PolicyWorker(cfg, MODEL_DIR, rank, world, "127.0.0.1", port)
    w.setup(total_opt_steps=100)
    samples = make_samples(samples_per_rank * world, seed=1)[rank::world]
    tokens = sum(len(s["input_ids"]) for s in make_samples(samples_per_rank * world, seed=1))
    padded = 0
    for s0 in range(0, len(samples), micro):
        chunk = samples[s0 : s0 + micro]
        padded += max(len(s["input_ids"]) for s in chunk) * len(chunk)
    denom = float(sum(int(s["loss_mask"].sum()) for s in make_samples(samples_per_rank * world, seed=1)))
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):
        torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        m = w.update_policy(samples, denom)
        torch.cuda.synchronize()
        dist.barrier()
        if i:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    if rank == 0:
        q.put({"times": times, "tokens": tokens, "peak_gib": peak, "grad_norm": m["actor/grad_norm"], "padded_rank0": padded})
    dist.destroy_process_group()


def run_ours(world: int, samples_per_rank: int, micro: int, steps: int, extra: tuple = ()) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, port, samples_per_rank, micro, steps, q, extra)) for r in range(world)]
    for p in procs:
        p.start()
    res = q.get(timeout=1500)
    for p in procs:
        p.join()
    return res


def _baseline(samples_per_gpu: int, micro: int, steps: int, q):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.cuda.set_device(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(MODEL_DIR, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    samples = make_samples(samples_per_gpu, seed=1)
    tokens = sum(len(s["input_ids"]) for s in samples)
    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s0 in range(0, len(samples), micro):
            chunk = samples[s0 : s0 + micro]
            L = max(len(s["input_ids"]) for s in chunk)
            ids = torch.full((len(chunk), L), 151643)
            att = torch.zeros((len(chunk), L), dtype=torch.long)
            mm = torch.zeros((len(chunk), L), dtype=torch.long)
            labels = torch.full((len(chunk), L), -100)
            for j, s in enumerate(chunk):
                n = len(s["input_ids"])
                ids[j, :n], att[j, :n], mm[j, :n] = s["input_ids"], 1, s["mm_token_type_ids"]
                labels[j, :n] = torch.where(s["loss_mask"].bool(), s["input_ids"], -100)
            out = model(input_ids=ids.cuda(), attention_mask=att.cuda(), mm_token_type_ids=mm.cuda(), labels=labels.cuda(),
                        pixel_values=torch.cat([s["pixel_values"] for s in chunk]).cuda().bfloat16(),
                        image_grid_thw=torch.cat([s["image_grid_thw"] for s in chunk]).cuda())
            out.loss.backward()
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    q.put({"times": times, "tokens": tokens, "peak_gib": torch.cuda.max_memory_allocated() / 2**30})


def run_baseline(samples: int, micro: int, steps: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_baseline, args=(samples, micro, steps, q))
    p.start()
    res = q.get(timeout=1500)
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--samples-per-rank", type=int, default=8)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--no-reshard", action="store_true", help="actor.reshard_after_forward=false")
    args = ap.parse_args()
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401 (fail early)

    build_model_dir()
    from transformers import AutoConfig

    with torch.device("meta"):
        n_params = sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(MODEL_DIR)).parameters())
    rows = []
    base = run_baseline(args.samples_per_rank, args.micro, args.steps)
    b_s = statistics.median(base["times"])
    b_tps = base["tokens"] / b_s
    b_mfu = 6 * n_params * base["tokens"] / b_s / (PEAK_BF16_TFLOPS * 1e12)
    rows.append({"run": "baseline: transformers fwd+bwd, 1 GPU", "gpus": 1, "tokens/s/GPU": b_tps, "MFU": b_mfu, "peak GiB": base["peak_gib"]})
    for world in args.gpus:
        if world > torch.cuda.device_count():
            print(f"skipping {world} GPUs: only {torch.cuda.device_count()} visible")
            continue
        extra = ("actor.reshard_after_forward=false",) if args.no_reshard else ()
        res = run_ours(world, args.samples_per_rank, args.micro, args.steps, extra)
        secs = statistics.median(res["times"])
        tps = res["tokens"] / secs / world
        mfu = 6 * n_params * res["tokens"] / secs / (PEAK_BF16_TFLOPS * 1e12 * world)
        rows.append({"run": "ovlt: FSDP2 GRPO update + AdamW" + (" (no reshard)" if args.no_reshard else ""), "gpus": world, "tokens/s/GPU": tps, "MFU": mfu, "peak GiB": res["peak_gib"]})
        record("actor_update", n_gpu=world,
               config={"model": "Qwen2.5-VL-7B-shaped", "params": n_params, "samples_per_rank": args.samples_per_rank,
                       "micro_batch": args.micro, "prompt_tokens": PROMPT_TOKENS, "image_grid": IMAGE_GRID,
                       "response_tokens": "uniform 100-2048", "gradient_checkpointing": True,
                       "reshard_after_forward": not args.no_reshard, "dtype": "bf16 compute, fp32 master"},
               figures={"mfu": mfu, "tokens_per_s_per_gpu": tps, "seconds_per_update": secs, "peak_gib": res["peak_gib"],
                        "tokens_per_update": res["tokens"]},
               baseline={"name": "transformers forward+backward, padded, 1 GPU, no optimizer", "mfu": b_mfu,
                         "tokens_per_s_per_gpu": b_tps, "peak_gib": base["peak_gib"]})
    print(table(rows, ["run", "gpus", "tokens/s/GPU", "MFU", "peak GiB"]))


if __name__ == "__main__":
    main()
