"""Actor update benchmark: tokens/s/GPU and MFU of ovlt's GRPO policy update (FSDP2, GRPO loss,
AdamW step and FSDP communication included) for a Qwen2.5-VL-7B-shaped model at GRPO-like shapes.

    python bench/actor_update.py --gpus 2 4 [--samples-per-rank 16] [--micro 4] [--max-tokens 32768]

Shapes: a ~500-token prompt holding one 504x504 image (324 image tokens, the paper's 262144-pixel
budget) and a response of 100-2048 tokens (uniform, seeded). MFU = 6 * N * tokens / time /
(989 TFLOP/s * GPUs), counting real tokens only (padding is waste, not work).

Rows of the table, all in one run on the same samples:
- ours: packed rows (`actor.padding_free`, no padding, attention within each sample) in
  micro-batches by token budget (`actor.max_tokens_per_micro_batch`);
- ours, padded: the same workers with right-padded micro-batches of `--micro` samples (the
  previous path), run in the same processes after the packed steps;
- baseline: plain transformers forward+backward of the same model with padded batches on one
  GPU, bf16, gradient checkpointing, no optimizer, no FSDP (on a spare GPU alongside the
  2-GPU run when the machine has one, else before it).
Each worker also checks that packed and padded log-probs of the same samples agree (bf16 noise).

`--model small` and `--device cpu` run the same code on a scaled model / the tiny CPU model (smoke tests).
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
# One clock for the parent and its spawned workers (they inherit the environment).
T0 = float(os.environ.setdefault("OVLT_BENCH_T0", str(time.time())))


def say(msg: str) -> None:
    """Progress with the seconds since start, so that a run cut off by a time limit still tells where it was."""
    print(f"[+{time.time() - T0:.0f}s] {msg}", flush=True)


def small_config():
    """A ~1 B Qwen2.5-VL (7B's layout, narrower and shallower) for quick GPU smoke runs."""
    cfg = qwen25vl_7b_config()
    t, v = cfg.text_config, cfg.vision_config
    t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads = 1536, 8960, 8, 12, 2
    v.depth, v.out_hidden_size, v.fullatt_block_indexes = 8, 1536, [3, 7]
    # One layer type per layer: the 7B config's list has 28, and loading the saved config checks the count.
    t.layer_types = t.layer_types[: t.num_hidden_layers]
    return cfg


def qwen25vl_3b_config():
    """Qwen2.5-VL-3B-Instruct's published text shapes on the same vision tower (random weights)."""
    cfg = qwen25vl_7b_config()
    t, v = cfg.text_config, cfg.vision_config
    t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads = 2048, 11008, 36, 16, 2
    t.vocab_size, v.out_hidden_size = 151936, 2048
    t.tie_word_embeddings = cfg.tie_word_embeddings = True
    t.layer_types = [t.layer_types[0]] * t.num_hidden_layers
    return cfg


def build_model_dir(model: str, path: str) -> str:
    """Save a random model once (bf16 safetensors), so that workers load it like a checkpoint."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if model == "tiny":
        from ovlt_rl.models.loading import resolve_model_path

        return resolve_model_path("tiny")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    config = {"7b": qwen25vl_7b_config, "3b": qwen25vl_3b_config, "small": small_config}[model]()
    with torch.device("cuda", 0):
        m = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    m.generation_config.pad_token_id = 151643
    m.config.pad_token_id = 151643
    tmp = path + ".tmp"
    m.save_pretrained(tmp)
    os.replace(tmp, path)
    del m
    torch.cuda.empty_cache()
    return path


def make_samples(n: int, seed: int, config, shapes: dict) -> list[dict]:
    """GRPO samples: prompt with one image + a response of mixed length, advantages and old log-probs."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    v = config.vision_config
    grid = shapes["image_grid"]
    n_img = grid[1] * grid[2] // v.spatial_merge_size**2
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
    # Random text below the special tokens (they sit just under <|vision_start|>, as in Qwen's vocabulary).
    vocab = min(config.get_text_config().vocab_size, config.vision_start_token_id - 9)
    prompt = shapes["prompt_tokens"]
    out = []
    for _ in range(n):
        resp = rng.randint(*shapes["response_tokens"])
        text = prompt - n_img - 2
        ids = torch.cat([
            torch.tensor([config.vision_start_token_id]), torch.full((n_img,), config.image_token_id),
            torch.tensor([config.vision_end_token_id]), torch.randint(0, vocab, (text + resp,), generator=g),
        ])
        mm = (ids == config.image_token_id).long()
        loss_mask = torch.zeros(len(ids))
        loss_mask[prompt:] = 1
        out.append({
            "input_ids": ids, "mm_token_type_ids": mm, "loss_mask": loss_mask,
            "pixel_values": torch.randn(grid[1] * grid[2], patch_dim, generator=g),
            "image_grid_thw": torch.tensor([grid]),
            "advantages": loss_mask * (rng.random() - 0.5), "old_logprobs": -torch.rand(len(ids), generator=g) * loss_mask,
        })
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_updates(w, samples, denom, steps, device, label) -> tuple[list[float], float]:
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):  # the first is a warm-up
        _sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        m = w.update_policy(samples, denominator=denom, temperature=1.0)
        _sync(device)
        dist.barrier()
        if i:
            times.append(time.perf_counter() - t0)
        if w.rank == 0:
            say(f"{label}: update {i} ({'timed' if i else 'warm-up'}) {time.perf_counter() - t0:.2f} s")
    if m["actor/skipped"]:
        raise RuntimeError("the benchmark update was skipped (non-finite grad norm)")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return times, peak


def _profile_update(w, samples, denom, args) -> None:
    """One packed update under torch.profiler; rank 0 writes the operators by total device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        w.update_policy(samples, denominator=denom, temperature=1.0)
        _sync(args.device)
    if w.rank == 0:
        key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
        os.makedirs(args.profile, exist_ok=True)
        with open(os.path.join(args.profile, "profile.txt"), "w") as f:
            f.write(table)
        print(table, flush=True)


def _rank(rank, world, port, args, model_dir, q):
    from ovlt.config import load_config
    from ovlt_rl.workers.policy import PolicyWorker, worker_settings
    from transformers import AutoConfig

    if args.device == "cuda":  # one GPU per process, as Ray gives each policy actor: the worker uses cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.first_gpu + rank)
    os.environ["OVLT_TORCH_THREADS"] = "4" if args.device == "cuda" else "1"
    import torch.distributed as dist

    n_total = args.samples_per_rank * world
    cfg = load_config("grpo", [
        f"model.path={model_dir}", "model.gradient_checkpointing=true", f"trainer.device={args.device}",
        "model.dtype=" + ("bf16" if args.device == "cuda" else "fp32"),
        "data.train_files=[x]", f"actor.num_workers={world}", "actor.use_kl_loss=false",
        f"actor.micro_batch_size={args.micro}", f"actor.global_batch_size={n_total}", "rollout.n=1",
        f"data.rollout_batch_size={n_total}", "actor.lr=1e-6", "actor.reshard_after_forward=false",
        "actor.padding_free=true", f"actor.max_tokens_per_micro_batch={args.max_tokens}", *args.extra,
    ])
    w = PolicyWorker(model_dir, rank, world, "127.0.0.1", port, **worker_settings(cfg))
    w.setup(total_opt_steps=100)
    if rank == 0:
        say(f"{world} ranks: model loaded and sharded")
    everything = make_samples(n_total, 1, AutoConfig.from_pretrained(model_dir), args.shapes)
    samples = everything[rank::world]
    tokens = sum(len(s["input_ids"]) for s in everything)
    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in everything))
    from ovlt_rl.workers.packed_attention import kernel_for

    res = {"tokens": tokens, "attention": kernel_for(args.device, torch.bfloat16 if args.device == "cuda" else torch.float32)}

    # Packed and padded log-probs of the same samples agree (bf16 kernels differ: small noise).
    check = samples[:2]
    packed_lp = w.compute_logprobs(check, which="policy", micro_batch_size=2, temperature=1.0)
    cfg.actor.padding_free = False
    padded_lp = w.compute_logprobs(check, which="policy", micro_batch_size=2, temperature=1.0)
    res["logprob_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(packed_lp, padded_lp))
    if rank == 0:
        say(f"{world} ranks: packed vs padded log-probs max |diff| {res['logprob_max_abs_diff']:.3g} ({res['attention']})")

    cfg.actor.padding_free, cfg.actor.max_tokens_per_micro_batch = True, args.max_tokens
    res["packed_micro_batches"] = len(w._plan(samples, args.micro, args.max_tokens))
    res["packed_times"], res["packed_peak_gib"] = _time_updates(w, samples, denom, args.steps, args.device,
                                                                   f"{world} GPUs, packed")
    if args.profile:
        _profile_update(w, samples, denom, args)
    cfg.actor.padding_free, cfg.actor.max_tokens_per_micro_batch = False, 0
    res["padded_micro_batches"] = len(w._plan(samples, args.micro, 0))
    res["padded_times"], res["padded_peak_gib"] = _time_updates(w, samples, denom, args.steps, args.device,
                                                                   f"{world} GPUs, padded")
    padded = sum(len(c) * max(len(samples[i]["input_ids"]) for i in c) for c, _ in w._plan(samples, args.micro, 0))
    res["padding_fraction_rank0"] = 1 - sum(len(s["input_ids"]) for s in samples) / padded
    # Peaks are per process; report the largest over ranks.
    peaks = torch.tensor([res["packed_peak_gib"], res["padded_peak_gib"]], device=w.device)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    res["packed_peak_gib"], res["padded_peak_gib"] = peaks.tolist()
    if rank == 0:
        q.put(res)
        q.close()
        q.join_thread()
    w.shutdown()
    os._exit(0)  # skip the interpreter's teardown (seconds per process, and the parent joins us)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(world: int, args, model_dir: str):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, args, model_dir, q)) for r in range(world)]
    for p in procs:
        p.start()
    return procs, q


def _baseline(args, model_dir, q):
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from ovlt_rl.models.loading import enable_gradient_checkpointing

    dev = args.device
    if dev == "cuda":
        torch.cuda.set_device(args.baseline_gpu)
    else:
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(
        torch.device(dev, args.baseline_gpu) if dev == "cuda" else dev)
    enable_gradient_checkpointing(model)  # transformers' own checkpointing, under either of its names
    model.config.use_cache = False
    samples = make_samples(args.samples_per_rank, 1, AutoConfig.from_pretrained(model_dir), args.shapes)
    samples.sort(key=lambda s: len(s["input_ids"]))  # the same length-sorted micro-batches as ours, padded
    tokens = sum(len(s["input_ids"]) for s in samples)
    device = model.device
    times = []
    for i in range(args.steps + 1):
        _sync(dev)
        t0 = time.perf_counter()
        for s0 in range(0, len(samples), args.micro):
            chunk = samples[s0 : s0 + args.micro]
            L = max(len(s["input_ids"]) for s in chunk)
            ids = torch.full((len(chunk), L), 0)
            att = torch.zeros((len(chunk), L), dtype=torch.long)
            mm = torch.zeros((len(chunk), L), dtype=torch.long)
            labels = torch.full((len(chunk), L), -100)
            for j, s in enumerate(chunk):
                n = len(s["input_ids"])
                ids[j, :n], att[j, :n], mm[j, :n] = s["input_ids"], 1, s["mm_token_type_ids"]
                labels[j, :n] = torch.where(s["loss_mask"].bool(), s["input_ids"], -100)
            out = model(input_ids=ids.to(device), attention_mask=att.to(device), mm_token_type_ids=mm.to(device),
                        labels=labels.to(device), pixel_values=torch.cat([s["pixel_values"] for s in chunk]).to(device, dtype),
                        image_grid_thw=torch.cat([s["image_grid_thw"] for s in chunk]).to(device))
            out.loss.backward()
        _sync(dev)
        if i:
            times.append(time.perf_counter() - t0)
        say(f"baseline: fwd+bwd pass {i} ({'timed' if i else 'warm-up'}) {time.perf_counter() - t0:.2f} s")
        model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0
    q.put({"times": times, "tokens": tokens, "peak_gib": peak})
    q.close()
    q.join_thread()
    os._exit(0)


def start_baseline(args, model_dir):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_baseline, args=(args, model_dir, q))
    p.start()
    return [p], q


def wait(procs, q, what: str) -> dict:
    deadline = time.monotonic() + 1500
    while True:
        try:
            res = q.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 - queue.Empty; check that the workers are alive
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                for p in procs:
                    if p.is_alive():
                        p.kill()
                raise RuntimeError(f"{what} failed: exit codes {[p.exitcode for p in procs]}")
    for p in procs:
        p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--samples-per-rank", type=int, default=16)
    ap.add_argument("--micro", type=int, default=4, help="samples per padded micro-batch (padded row and baseline)")
    ap.add_argument("--max-tokens", type=int, default=32768, help="token budget per packed micro-batch (ours)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--model", choices=["7b", "3b", "small", "tiny"], default="7b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides of our workers' config "
                    "(e.g. actor.compile=true; the baseline is unchanged)")
    ap.add_argument("--no-record", action="store_true", help="print only (smoke runs)")
    ap.add_argument("--profile", default="", help="folder: rank 0 profiles one more packed update with torch.profiler "
                    "and writes the top kernels (by device time) there as profile.txt")
    args = ap.parse_args()
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    if args.model == "tiny":  # CPU smoke shapes: 16 image tokens, short responses
        args.shapes = {"prompt_tokens": 40, "image_grid": (1, 8, 8), "response_tokens": (5, 60)}
    else:
        args.shapes = {"prompt_tokens": 500, "image_grid": (1, 36, 36), "response_tokens": (100, 2048)}
    n_dev = torch.cuda.device_count() if args.device == "cuda" else 64
    path = MODEL_DIR if args.model == "7b" else MODEL_DIR.replace("7b", args.model)
    say(f"building or finding the {args.model} model")
    model_dir = build_model_dir(args.model, path)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(model_dir)).parameters())
    worlds = [w for w in args.gpus if w <= n_dev]
    for w in args.gpus:
        if w > n_dev:
            print(f"skipping {w} GPUs: only {n_dev} visible")

    def mfu(tokens, secs, gpus):
        return 6 * n_params * tokens / secs / (PEAK_BF16_TFLOPS * 1e12 * gpus)

    # On a machine with a GPU to spare, the baseline runs on the first GPU the smallest run leaves
    # free, at the same time as that run (no shared GPU or link); otherwise alone, before it.
    # Each world size is printed and recorded as soon as it is done.
    concurrent = args.device == "cuda" and bool(worlds) and worlds[0] < n_dev
    args.first_gpu, args.baseline_gpu = 0, (worlds[0] if concurrent else 0)
    say(f"model ready ({n_params / 1e9:.2f} B parameters); starting the baseline")
    base_run = start_baseline(args, model_dir)
    base = None if concurrent else wait(*base_run, "baseline")
    rows = []
    for world in worlds:
        res = wait(*start_ours(world, args, model_dir), f"ovlt on {world} GPUs")
        if base is None:
            base = wait(*base_run, "baseline")
        if not rows:
            b_s = statistics.median(base["times"])
            b_tps, b_mfu = base["tokens"] / b_s, mfu(base["tokens"], b_s, 1)
            rows.append({"run": f"baseline: transformers fwd+bwd, padded micro {args.micro}", "gpus": 1,
                         "tokens/s/GPU": b_tps, "MFU": b_mfu, "peak GiB": base["peak_gib"]})
            baseline = {"name": f"transformers forward+backward, padded micro {args.micro}, 1 GPU, no optimizer",
                        "mfu": b_mfu, "tokens_per_s_per_gpu": b_tps, "peak_gib": base["peak_gib"]}
        rows += report(world, res, args, n_params, mfu, baseline)
        print(table(rows, ["run", "gpus", "tokens/s/GPU", "MFU", "peak GiB", "micro/rank"]), flush=True)


def report(world: int, res: dict, args, n_params: int, mfu, baseline: dict) -> list[dict]:
    """Table rows of one world size; appends its record to results.jsonl."""
    figures = {}
    for kind in ("packed", "padded"):
        secs = statistics.median(res[f"{kind}_times"])
        figures[kind] = {"mfu": mfu(res["tokens"], secs, world), "tokens_per_s_per_gpu": res["tokens"] / secs / world,
                         "seconds_per_update": secs, "peak_gib": res[f"{kind}_peak_gib"],
                         "micro_batches_per_rank": res[f"{kind}_micro_batches"]}
    say(f"{world} GPUs: packed rows attend with {res['attention']}; packed vs padded log-probs max |diff| "
        f"{res['logprob_max_abs_diff']:.3g}; padding in the padded micro-batches (rank 0): {res['padding_fraction_rank0']:.1%}")
    if not args.no_record:
        record("actor_update", n_gpu=world,
               config={"model": f"Qwen2.5-VL-{args.model}-shaped", "params": n_params, "samples_per_rank": args.samples_per_rank,
                       "max_tokens_per_micro_batch": args.max_tokens, "padded_micro_batch": args.micro,
                       "prompt_tokens": args.shapes["prompt_tokens"], "image_grid": args.shapes["image_grid"],
                       "response_tokens": "uniform %d-%d" % args.shapes["response_tokens"], "gradient_checkpointing": True,
                       "reshard_after_forward": False, "dtype": "bf16 compute, fp32 master", "padding_free": True,
                       "packed_attention": res["attention"], "overrides": args.extra},
               figures={**figures["packed"], "tokens_per_update": res["tokens"],
                        "packed_vs_padded_logprob_max_abs_diff": res["logprob_max_abs_diff"],
                        "padded": figures["padded"], "padding_fraction_padded_rank0": res["padding_fraction_rank0"]},
               baseline=baseline)
    extra = "".join(f", {kv}" for kv in args.extra)
    return [
        {"run": f"ovlt: packed, <= {args.max_tokens} tokens/micro-batch{extra}", "gpus": world,
         "tokens/s/GPU": figures["packed"]["tokens_per_s_per_gpu"], "MFU": figures["packed"]["mfu"],
         "peak GiB": figures["packed"]["peak_gib"], "micro/rank": res["packed_micro_batches"]},
        {"run": f"ovlt: padded, micro {args.micro}{extra}", "gpus": world,
         "tokens/s/GPU": figures["padded"]["tokens_per_s_per_gpu"], "MFU": figures["padded"]["mfu"],
         "peak GiB": figures["padded"]["peak_gib"], "micro/rank": res["padded_micro_batches"]},
    ]


if __name__ == "__main__":
    main()
