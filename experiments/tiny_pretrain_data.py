"""Data for the caption-pretraining experiment on the tiny task (a tiny base that
can see: docs/notes/2026-11-22-caption-pretraining.md), and a check of what the pretrained model reads.

    python experiments/tiny_pretrain_data.py write --out outputs/tiny-pretrain --sft outputs/tiny-data/sft.parquet
    python experiments/tiny_pretrain_data.py pretrain --out outputs/tiny-pretrain       # captions + text-only reasoning (session 6)
    python experiments/tiny_pretrain_data.py captions --model outputs/tiny-pre/hf      # exact-match captions, 2-core CPU, ~15 s

The paper starts from a pretrained VLM that already reads images; the tiny model starts from random
weights, so its SFT spends most steps learning to see. `write` makes three files for testing a
pretrained start with the ordinary `ovlt sft` / `ovlt grpo` commands:

- captions.parquet: "<image>Describe the image." -> the scene description (train split, its own
  seed, so no validation or test image), the tiny analogue of caption pretraining;
- sft_caption_first.parquet: the SFT rows with the scene description put first in <think> (the
  reasoner rephrases it, and a tiny model does not carry what it learned to read across phrasings);
- rl_fresh.parquet: RL prompts from another seed, so a long GRPO run never repeats a prompt.

`pretrain` writes pretrain.parquet, half caption rows and half text-only reasoning ("{description}
\n{question}" -> the reasoner's answer, restating the description): a base that can also reason in
words, as a real VLM's language model can (docs/notes/2026-11-22-weak-captioner.md).

`captions` greedily describes the first validation images with a model and counts exact matches
per family: how much of the image a model reads, separately from any reasoning.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: ovlt_rl, data_prep

CAPTION_QUESTION = "Describe the image."


def _caption_row(s, index: int) -> dict:
    """"<image>Describe the image." -> the scene description, for a synthetic sample."""
    from data_prep import synthetic
    from ovlt_rl.data.schema import IMAGE_PLACEHOLDER, make_row

    return make_row(data_source=f"caption/{s.family}", question=IMAGE_PLACEHOLDER + CAPTION_QUESTION,
                    ground_truth=s.caption, images=[synthetic.render(s)], response=s.caption,
                    extra_info={"family": s.family, "template": "caption", "index": index})


def write_captions(out: Path, n: int, seed: int) -> Path:
    """captions.parquet: n "<image>Describe the image." -> scene description rows, families in turn."""
    from data_prep import synthetic
    from ovlt_rl.data.schema import write_rows

    rows = []
    for i in range(n):
        family = synthetic.FAMILIES[i % len(synthetic.FAMILIES)]
        rows.append(_caption_row(synthetic.sample(i, seed=seed, split="train", family=family), i))
    path = write_rows(rows, out / "captions.parquet")
    print("wrote", path, len(rows))
    return path


def write(out: Path, sft: Path, n_captions: int, n_rl: int, seed: int) -> None:
    import pyarrow.parquet as pq

    from data_prep import synthetic
    from ovlt_rl.data.schema import write_rows

    write_captions(out, n_captions, seed)
    table = pq.read_table(sft)
    responses = table.column("response").to_pylist()
    extras = table.column("extra_info").to_pylist()
    new = []
    for response, extra in zip(responses, extras):
        if not response.startswith("<think>"):
            raise ValueError(f"{sft}: a response does not start with <think>: {response[:80]!r}")
        new.append("<think>" + json.loads(extra)["caption"] + " " + response[len("<think>"):])
    table = table.set_column(table.schema.get_field_index("response"), "response", [new])
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "sft_caption_first.parquet")
    print("wrote", out / "sft_caption_first.parquet", len(new))

    rl = synthetic.generate(n_rl, seed=seed + 1, split="train")
    print("wrote", write_rows(rl, out / "rl_fresh.parquet"), len(rl))


def write_pretrain(out: Path, n: int, seed: int) -> None:
    """pretrain.parquet: the tiny base's pretraining mix, shuffled, half of each kind:
    - "<image>Describe the image." -> the scene description (seeing);
    - text only, "{description}\n{question}" -> the reasoner's answer, restating the description
      (reasoning in words, as the language model of a real VLM can before any visual SFT).
    The scenes come from the train split with their own seed, so no validation or test image."""
    import random

    from data_prep import synthetic
    from data_prep.reasoner import ProgrammaticReasoner
    from ovlt_rl.data.schema import make_row, write_rows

    reasoner = ProgrammaticReasoner(seed=seed, wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0, restate_rate=1.0)
    rows = []
    for i in range(n):
        family = synthetic.FAMILIES[i % len(synthetic.FAMILIES)]
        s = synthetic.sample(i, seed=seed, split="train", family=family)
        if i % 2 == 0:
            rows.append(_caption_row(s, i))
        else:
            response = reasoner.answer(s.caption, s.question, family)[0]
            rows.append(make_row(data_source=f"text/{family}", question=f"{s.caption}\n{s.question}",
                                 ground_truth=s.answer, response=response,
                                 extra_info={"family": family, "template": s.template, "index": i}))
    random.Random(seed).shuffle(rows)
    print("wrote", write_rows(rows, out / "pretrain.parquet"), len(rows))


def captions(model_path: str, n: int) -> None:
    import torch
    from PIL import Image

    from data_prep import synthetic
    from ovlt_rl.models.loading import load_model, load_processor

    torch.set_num_threads(2)
    processor = load_processor(model_path, min_pixels=3136, max_pixels=12544)  # the tiny recipes' bounds: 16 image tokens
    model = load_model(model_path).eval()
    right: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for i in range(n):
        family = synthetic.FAMILIES[i % len(synthetic.FAMILIES)]
        s = synthetic.sample(i, seed=0, split="val", family=family)
        image = Image.open(io.BytesIO(synthetic.render(s))).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
        said = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        right[family] += said == s.caption
        total[family] += 1
    print("exact-match captions on validation images:")
    for family in total:
        print(f"  {family:8s} {right[family]}/{total[family]}")
    print(f"  all      {sum(right.values())}/{sum(total.values())} = {sum(right.values()) / sum(total.values()):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write captions.parquet, sft_caption_first.parquet and rl_fresh.parquet")
    w.add_argument("--out", type=Path, default=Path("outputs/tiny-pretrain"))
    w.add_argument("--sft", type=Path, default=Path("outputs/tiny-data/sft.parquet"), help="tiny SFT rows (ovlt prepare recipe=tiny)")
    w.add_argument("--captions", type=int, default=16000)
    w.add_argument("--rl", type=int, default=8000)
    w.add_argument("--seed", type=int, default=7, help="not the task's seed 0, so the images are new")
    pt = sub.add_parser("pretrain", help="write pretrain.parquet: captions and text-only reasoning, half each")
    pt.add_argument("--out", type=Path, default=Path("outputs/tiny-pretrain"))
    pt.add_argument("--n", type=int, default=32000)
    pt.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("captions", help="exact-match captions of a model on validation images")
    c.add_argument("--model", required=True)
    c.add_argument("--n", type=int, default=80)
    args = ap.parse_args()
    if args.cmd == "write":
        write(args.out, args.sft, args.captions, args.rl, args.seed)
    elif args.cmd == "pretrain":
        write_pretrain(args.out, args.n, args.seed)
    else:
        captions(args.model, args.n)


if __name__ == "__main__":
    main()
