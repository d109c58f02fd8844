"""Does the tiny model learn to read the image, and after how many SFT steps?

    python experiments/tiny_image_use.py --data outputs/tiny-data --steps 1000 --device cuda
    python experiments/tiny_image_use.py --data outputs/tiny-data --steps 1000 --device cuda --freeze-vision --lr 3e-3

A diagnostic, not a throughput benchmark: it trains the tiny Qwen2.5-VL on the distilled SFT rows
with a plain single-process loop (AdamW, warmup + cosine; deliberately not our engine, so that it
isolates the model and the data from the trainer) and every `--eval-every` steps prints the
held-out loss twice: with each row's own image, and with the images rolled by one inside the batch
(another row's image). The difference ("gap") is how much the model uses the image; 0 means the
text alone explains its predictions. At the end (and at `--gen-at` steps) it decodes the validation
prompts near-greedily and grades them with the built-in reward, per task family.

`--data` is a folder made by `ovlt prepare recipe=tiny` (sft.parquet, val.parquet). Results of
the runs in docs/notes/2026-11-22-tiny-image-use.md came from this script (8 runs side by side on one H100).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovlt_rl.data.collate import collate_sft, model_inputs  # noqa: E402
from ovlt_rl.data.dataset import PromptDataset, SFTDataset  # noqa: E402
from ovlt_rl.engines.base import SamplingParams  # noqa: E402
from ovlt_rl.engines.hf import HFEngine  # noqa: E402
from ovlt_rl.models.loading import load_model, load_processor  # noqa: E402
from ovlt_rl.models.tiny import build_tiny_model  # noqa: E402
from reward.builtins import openvlthinker  # noqa: E402

MIN_PIXELS = 3136


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with sft.parquet and val.parquet (ovlt prepare recipe=tiny)")
    p.add_argument("--models", default="/tmp/ovlt-tiny-image-use", help="where the tiny models are built")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vision-lr-mult", type=float, default=1.0)
    p.add_argument("--freeze-vision", action="store_true", help="keep the vision tower (and merger) at its random init")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="{}", help="JSON overrides of ovlt_rl.models.tiny.tiny_config, e.g. '{\"vision_depth\": 1}'")
    p.add_argument("--patch-scale", type=float, default=1.0, help="multiply the patch-embedding init")
    p.add_argument("--merger-scale", type=float, default=1.0, help="multiply the merger MLP init")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--gen-at", default="", help="comma-separated steps with a generation eval (always at the end)")
    p.add_argument("--val-prompts", type=int, default=200)
    p.add_argument("--max-pixels", type=int, default=12544)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model_dir = Path(a.models) / ("tiny-" + hashlib.md5((a.config + str(a.seed)).encode()).hexdigest()[:10])
    if not model_dir.exists():
        build_tiny_model(model_dir, seed=a.seed, **json.loads(a.config))
    proc = load_processor(str(model_dir), min_pixels=MIN_PIXELS, max_pixels=a.max_pixels)
    model = load_model(str(model_dir)).to(a.device)
    visual = model.model.visual
    with torch.no_grad():
        visual.patch_embed.proj.weight.mul_(a.patch_scale)
        for m in visual.merger.mlp:
            if hasattr(m, "weight"):
                m.weight.mul_(a.merger_scale)

    ds = SFTDataset(f"{a.data}/sft.parquet", proc, min_pixels=MIN_PIXELS, max_pixels=a.max_pixels, max_length=400, prompt_suffix="")
    items = [ds[i] for i in range(len(ds))]
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    held, train = order[:96], order[96:]
    pad = proc.tokenizer.pad_token_id

    vision_params = list(visual.parameters())
    vision_ids = {id(p) for p in vision_params}
    text_params = [p for p in model.parameters() if id(p) not in vision_ids]
    groups = [{"params": text_params, "lr": a.lr}]
    if a.freeze_vision:
        for p in vision_params:
            p.requires_grad_(False)
    else:
        groups.append({"params": vision_params, "lr": a.lr * a.vision_lr_mult})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = 5
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, a.steps)))))
    )

    def loss_of(batch_items, other_image: bool = False) -> torch.Tensor:
        b = collate_sft(batch_items, pad)
        inputs = model_inputs(b)
        if other_image:  # every row gets the next row's image (all images have the same size here)
            pv, thw = inputs["pixel_values"], inputs["image_grid_thw"]
            per = pv.shape[0] // thw.shape[0]
            inputs["pixel_values"] = pv.view(thw.shape[0], per, -1).roll(1, 0).reshape(pv.shape)
        labels = inputs["input_ids"].clone()
        labels[b["labels_mask"] == 0] = -100
        inputs = {k: v.to(a.device) for k, v in inputs.items()}
        return model(**inputs, labels=labels.to(a.device)).loss

    @torch.no_grad()
    def held_out() -> tuple[float, float]:
        model.eval()
        rows = [items[i] for i in held]
        own = sum(loss_of(rows[k : k + 32]).item() for k in range(0, len(rows), 32)) / math.ceil(len(rows) / 32)
        other = sum(loss_of(rows[k : k + 32], True).item() for k in range(0, len(rows), 32)) / math.ceil(len(rows) / 32)
        model.train()
        return own, other

    def val_accuracy() -> tuple[float, dict[str, float]]:
        import pyarrow.parquet as pq

        model.eval()
        prompts_ds = PromptDataset(f"{a.data}/val.parquet", proc, min_pixels=MIN_PIXELS, max_pixels=a.max_pixels,
                                   max_prompt_length=256, prompt_suffix="")
        rows = pq.read_table(f"{a.data}/val.parquet").to_pylist()
        n = min(a.val_prompts, len(prompts_ds))
        engine = HFEngine(str(model_dir), model=model, processor=proc, micro_batch_size=100, device=a.device)
        gens = engine.generate([prompts_ds[i] for i in range(n)],
                               SamplingParams(n=1, temperature=0.01, max_new_tokens=128, seed=0, logprobs=False))
        per_family: dict[str, list[float]] = {}
        for row, g in zip(rows[:n], gens):
            score = openvlthinker(g[0].text, row["reward_model"]["ground_truth"])["accuracy"]
            per_family.setdefault(row["data_source"].split("/")[-1], []).append(score)
        model.train()
        total = sum(sum(v) for v in per_family.values()) / n
        return round(total, 3), {k: round(sum(v) / len(v), 2) for k, v in per_family.items()}

    gen_at = {int(s) for s in a.gen_at.split(",") if s}
    rng = random.Random(a.seed)
    model.train()
    t0 = time.time()
    for step in range(1, a.steps + 1):
        loss = loss_of([items[i] for i in rng.sample(train, a.batch)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step in gen_at:
            print(f"{a.tag} step {step} val accuracy {val_accuracy()}", flush=True)
        if step % a.eval_every == 0 or step == a.steps:
            own, other = held_out()
            print(f"{a.tag} step {step} train loss {loss.item():.3f} held-out loss: own image {own:.3f}, "
                  f"another image {other:.3f}, gap {other - own:.3f} ({time.time() - t0:.0f}s)", flush=True)
    print(f"{a.tag} final val accuracy {val_accuracy()} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
