"""Rebuild ovlt_rl/models/tiny_pretrained (model.path=tiny-pretrained) from scratch.

    python experiments/rebuild_tiny_pretrained.py --work outputs/tiny-pretrained-rebuild --device cuda
    python experiments/rebuild_tiny_pretrained.py --work W --device cuda --install   # then replace the shipped folder

Runtime: about 30 minutes on the 2-core CPU with --device cpu (measured: the data stage 22 s,
then 1.2 s per 64-row step over 1350 steps plus about a minute of start-up per stage); about 12
minutes on one H100 (the hand-run stage 1, 600 steps, took 4 minutes there, start-up included).
`--max-steps 5` caps every stage at five steps (about 1.5 minutes a stage on the CPU): a check of
the script, not a model.

The shipped model was made by hand in three sessions (ovlt_rl/models/tiny_pretrained/README.md,
docs/notes/2026-11-22-caption-pretraining.md, docs/notes/2026-11-22-weak-captioner.md). This runs
the same stages, each an ordinary `ovlt sft` on rows of experiments/tiny_pretrain_data.py (scenes
of the synthetic task's train split with seed 7, never a validation or test image):

    data       captions.parquet ("<image>Describe the image." -> the scene description) and
               pretrain.parquet (half captions, half text-only "{description}\\n{question}" -> the
               programmatic reasoner's answer restating the description)
    b1         from `tiny`, 600 steps of 64 caption rows, lr 1e-3
    b2         300 steps of 64 caption rows, lr 5e-4, warmup 0.02
    b3         450 steps of 64 rows of the pretrain mix, lr 1e-3, warmup 0.02
    check      exact-match captions of 80 held-out images (the shipped model: 42/80)

A finished stage (its hf/ folder written) is skipped on a rerun, an interrupted one resumes from
its checkpoint. Stage 1's captions came from an older generator and stage 2 ran on a CPU, so a
rebuild is a model of the same kind, not the same weights. No validation during the stages (the
tiny recipe's validation data is the task's own, which a base must not be fitted to).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root: ovlt, ovlt_rl, data_prep
sys.path.insert(0, str(REPO / "experiments"))

SHIPPED = REPO / "ovlt_rl" / "models" / "tiny_pretrained"
# (name, model it starts from, rows, steps, extra overrides): the three hand-run sessions.
STAGES = [
    ("b1", "tiny", "captions.parquet", 600, ["actor.lr=1e-3"]),
    ("b2", "b1", "captions.parquet", 300, ["actor.lr=5e-4", "actor.warmup_ratio=0.02"]),
    ("b3", "b2", "pretrain.parquet", 450, ["actor.lr=1e-3", "actor.warmup_ratio=0.02"]),
]


def write_data(work: Path) -> None:
    from tiny_pretrain_data import write_captions, write_pretrain

    if not (work / "captions.parquet").is_file():
        write_captions(work, 16000, seed=7)
    if not (work / "pretrain.parquet").is_file():
        write_pretrain(work, 32000, seed=7)


def sft(work: Path, name: str, start: str, rows: str, steps: int, extra: list[str], device: str) -> Path:
    out = work / name
    if (out / "hf" / "config.json").is_file():
        print(f"{name}: done ({out / 'hf'})")
        return out / "hf"
    model = start if start == "tiny" else str(work / start / "hf")
    cmd = [sys.executable, "-m", "ovlt.cli", "sft", "recipe=tiny", f"model.path={model}",
           f"data.train_files=[{work / rows}]", "data.val_files=[]", "data.prepare_recipe=''",
           f"trainer.total_steps={steps}", "actor.global_batch_size=64", "actor.micro_batch_size=32",
           f"trainer.device={device}", "trainer.loggers=[console,jsonl]", f"trainer.output_dir={out}", *extra]
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return out / "hf"


def install(model: Path) -> None:
    """Replace the shipped model's files with `model`'s; its README stays."""
    for old in SHIPPED.iterdir():
        if old.name != "README.md":
            old.unlink()
    for new in model.iterdir():
        shutil.copy2(new, SHIPPED / new.name)
    print(f"installed {model} as {SHIPPED}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("outputs/tiny-pretrained-rebuild"))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--stages", default="data,b1,b2,b3,check", help="comma-separated subset, in order")
    ap.add_argument("--max-steps", type=int, default=0, help="cap every SFT stage at this many steps (a check of the script)")
    ap.add_argument("--install", action="store_true", help="copy the result into ovlt_rl/models/tiny_pretrained")
    args = ap.parse_args()
    work, wanted = args.work.resolve(), set(args.stages.split(","))
    work.mkdir(parents=True, exist_ok=True)
    if "data" in wanted:
        write_data(work)
    model = None
    for name, start, rows, steps, extra in STAGES:
        if name in wanted:
            model = sft(work, name, start, rows, min(steps, args.max_steps or steps), extra, args.device)
    if "check" in wanted:
        from tiny_pretrain_data import captions

        captions(str(work / STAGES[-1][0] / "hf"), 80)
    if args.install:
        install(model or work / STAGES[-1][0] / "hf")


if __name__ == "__main__":
    main()
