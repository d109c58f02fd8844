"""The `prepare` section of the config tree (see ovlt/config.py): data preparation.

`ovlt prepare recipe=...` reads it (data_prep/pipeline.py). Two modes:

- ``distill`` (iteration 1): a captioner describes each image, a text reasoner answers from the
  caption and the question, `distill.k` times per question;
- ``self_improve`` (iteration i+1): the GRPO model of iteration i answers the seed questions
  `self_improve.k` times each.

Both then filter (correctness, length, reflections, duplicates, contamination), keep one
response per question, and mix sources into the SFT set (`mix.sft`) and the RL set (`mix.rl`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES, FAMILIES
from ovlt_rl.config import ConfigError, any_of, check_choices, one_of
from ovlt_rl.models.paths import check_model_path

# The instruction the paper appends to questions; questions are compared without it.
PAPER_PROMPT_SUFFIX = "You FIRST think about the reasoning process as an internal monologue and then provide the final answer."

CAPTION_PROMPT = (
    "Describe this image in detail: every object, number, label, text and measurement, and where "
    "they are, so that someone who cannot see the image could answer questions about it."
)
REASONER_PROMPT = (
    "Here is a detailed description of an image: {caption}\n"
    "Question: {question}\n"
    "Please reason step by step, and put your final answer within \\boxed{{}}."
)


@dataclass
class SourceConfig:
    name: str = ""
    """Adapter name: a dataset of data_prep/sources (figureqa, geos, ..., scienceqa) or "parquet" (rows of our schema)."""
    path: str = ""
    """The local copy: a parquet/JSON file or a folder, in the dataset's published form."""
    form: str = one_of("", "native", "llava")
    """"native" (the dataset's own published form), "llava" (MathV360K / LLaVA-OneVision conversations), or "" (the source's default)."""
    image_root: str = ""
    """Folder that relative image paths in the copy are resolved against (empty: the copy's own folder)."""
    split: str = "train"
    """Split to read where a copy holds several (ignored by single-split copies)."""
    limit: int = 0
    """Read at most this many rows (0: all)."""


@dataclass
class MixEntry:
    source: str = ""
    """A data_source, or a prefix of data_sources ("synthetic" covers "synthetic/count", ...)."""
    count: int = 0
    """Rows to draw from this source (used when the stage's total is 0)."""
    weight: float = 0.0
    """Share of the stage's total (used when the stage's total is > 0)."""


@dataclass
class MixConfig:
    sft: list[MixEntry] = field(default_factory=list)
    """Sources of the SFT set; empty: all filtered rows."""
    sft_total: int = 0
    """0: `sft` entries give counts; > 0: `sft` entries give weights of this many rows."""
    rl: list[MixEntry] = field(default_factory=list)
    """Sources of the RL prompt set; empty: all pool rows (minus SFT questions if rl_exclude_sft)."""
    rl_total: int = 0
    """0: `rl` entries give counts; > 0: `rl` entries give weights of this many rows."""
    rl_exclude_sft: bool = True
    """Keep questions used by the SFT set out of the RL set (same image and question)."""


@dataclass
class DistillConfig:
    captioner: str = one_of("scene", "engine")
    """"scene" (the synthetic task's scene description, extra_info["caption"]) or "engine" (a VLM)."""
    reasoner: str = one_of("programmatic", "engine")
    """"programmatic" (data_prep/reasoner.py, synthetic task only) or "engine" (a text reasoning model)."""
    captioner_model: str = ""
    """HF folder of the captioning VLM (captioner=engine), e.g. Qwen2.5-VL-3B-Instruct."""
    reasoner_model: str = ""
    """HF folder of the text reasoner (reasoner=engine), e.g. an R1-distilled Qwen; "tiny-reasoner"
    is the offline tiny one (tiny-pretrained's decoder as a text-only model). Runs through
    rollout.engine (the hf engine loads text-only models with AutoModelForCausalLM)."""
    caption_prompt: str = CAPTION_PROMPT
    """Instruction given to the captioner with the image."""
    reasoner_prompt: str = REASONER_PROMPT
    """Reasoner prompt; {caption} and {question} are filled in."""
    k: int = 4
    """Reasoning samples per question."""
    limit: int = 0
    """Distill at most this many questions (0: all), shared out over mix.sft's sources like the mix."""
    temperature: float = 0.6
    """Reasoner sampling temperature (engine)."""
    top_p: float = 0.95
    """Reasoner nucleus sampling (engine)."""
    max_new_tokens: int = 4096
    """Reasoner token limit (engine)."""
    caption_max_new_tokens: int = 512
    """Captioner token limit (engine, greedy)."""


@dataclass
class SimulateConfig:
    """The embedded synthetic task's stand-ins for the paper's models (distill.captioner=scene,
    distill.reasoner=programmatic) and the flaws of real models they imitate, so that the filters
    and GRPO have work to do. Not read with engine models."""

    wrong_rate: float = 0.25
    """Programmatic reasoner: chance a sample misreads the scene."""
    reflect_rate: float = 0.25
    """Programmatic reasoner: chance a sample contains reflections."""
    verbose_rate: float = 0.15
    """Programmatic reasoner: chance a sample is padded past 500 words."""
    restate_rate: float = 0.0
    """Programmatic reasoner: share of responses whose reasoning starts with the caption, word for
    word (1.0: all)."""
    vague_rate: float = 0.0
    """Captioner=scene: share of scenes captioned without their values (a weak captioner); the
    programmatic reasoner guesses on those, and lucky guesses pass the correctness filter."""
    vague_families: list[str] | None = None
    """Captioner=scene: the task families vague_rate applies to (null: all), e.g. [chart]."""


@dataclass
class FilterConfig:
    min_reward: float = 1.0
    """A response is correct when the reward (reward.fn against the ground truth) is at least this."""
    max_words: int = 500
    """Keep responses with fewer words than this (the paper: under 500); 0 disables."""
    reflection_mode: str = one_of("remove_sentences", "drop_sample", "off")
    """"remove_sentences", "drop_sample" or "off"."""
    reflection_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_REFLECTION_PHRASES))
    """Phrases that mark a reflection (case-insensitive, whole words)."""
    dedup: bool = True
    """Drop repeats of (image, question, response)."""
    contamination_keys: list[str] = any_of(("image", "question"), ["image", "question"])
    """What makes a training row contaminated: any of "image" (same image bytes), "question" (same normalised text)."""
    eval_files: list[str] = field(default_factory=list)
    """Parquet files (our schema) of evaluation sets that training rows must not overlap."""
    question_boilerplate: list[str] = field(default_factory=lambda: [PAPER_PROMPT_SUFFIX])
    """Instruction texts removed before comparing questions."""
    pick: str = one_of("shortest", "longest", "random")
    """Which correct response to keep per question: "shortest", "longest" or "random"."""
    write_variants: bool = False
    """Also write sft_unfiltered / sft_length / sft_noreflect.parquet (the paper's filter ablation)."""


@dataclass
class SelfImproveConfig:
    model_path: str = ""
    """HF folder of the GRPO model of the previous iteration (mode=self_improve)."""
    k: int = 4
    """Responses drawn per seed question (n=k in one generate call)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_new_tokens: int = 2048
    """Response token limit."""
    limit: int = 0
    """Sample at most this many seed questions (0: all), shared out over mix.sft's sources like the mix."""


@dataclass
class DifficultyConfig:
    enabled: bool = False
    """Keep RL prompts the model solves 1..n-1 times out of n."""
    model_path: str = ""
    """HF folder of the model whose pass rate decides (the current policy)."""
    n: int = 8
    """Samples per prompt."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_new_tokens: int = 1024
    """Response token limit."""
    limit: int = 0
    """Measure at most this many RL candidates (0: all), shared out over mix.rl's sources like the mix."""


@dataclass
class PrepareConfig:
    output_dir: str = "outputs/data"
    """Where sft.parquet, rl.parquet, val/test.parquet, shards/ and manifest.json go."""
    seed: int = 0
    """Seed of everything random here: the synthetic task, sampling, picks, mixes."""
    synthetic_train: int = 2000
    """Synthetic training questions (the pool when prepare.synthetic is true)."""
    synthetic_val: int = 200
    """Synthetic validation questions (val.parquet)."""
    synthetic_test: int = 200
    """Synthetic test questions (test.parquet)."""
    image_size: int = 112
    """Side of the synthetic images in pixels."""
    families: list[str] = field(default_factory=list)
    """Synthetic families (empty: all)."""
    mode: str = one_of("distill", "self_improve")
    """"distill" (iteration 1: captioner -> text reasoner) or "self_improve" (iteration i+1: the GRPO model answers)."""
    synthetic: bool = False
    """Use the synthetic task: make train/val/test in synthetic_dir if missing; train is the pool, val/test are copied."""
    synthetic_dir: str = ""
    """Folder of the synthetic task's parquet files (empty: output_dir/synthetic)."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Datasets that make the question pool (besides the synthetic task)."""
    val_count: int = 0
    """Hold out this many pool rows as val.parquet (non-synthetic pools)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Iteration-1 distillation."""
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    """The synthetic task's simulated captioner and reasoner."""
    self_improve: SelfImproveConfig = field(default_factory=SelfImproveConfig)
    """Sampling from the previous GRPO model."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    """The SFT data filters."""
    mix: MixConfig = field(default_factory=MixConfig)
    """How many rows of which source go into the SFT and RL sets."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    """Optional RL prompt selection by pass rate."""
    shard_size: int = 256
    """Questions per generation shard (a committed shard is never redone on resume)."""
    batch_size: int = 32
    """Questions per engine generate call."""
    device: str = one_of("auto", "cpu", "cuda")
    """Engine device: "auto", "cpu" or "cuda"."""
    num_engines: int = 1
    """Engines (captioner, reasoner, sampler, pass-rate model) generating side by side, each on its
    own shards: 1 is one engine in the command's own process; more are Ray actors of
    rollout.gpus_per_worker GPUs each (on a GPU machine: one per GPU, or per tensor-parallel
    group). Each shard keeps its seed, so any number writes the same rows."""


def validate_prepare(p: PrepareConfig) -> None:
    """Checks run by `ovlt prepare` before any work; messages name the field."""
    def check(cond: bool, name: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"prepare.{name}: {msg}")

    check_choices(p, "prepare.")
    check(p.synthetic or bool(p.sources), "sources", "no sources and prepare.synthetic is false: nothing to prepare")
    sim = p.simulate
    check(0.0 <= sim.restate_rate <= 1.0, "simulate.restate_rate", f"must be within [0, 1], got {sim.restate_rate}")
    check(0.0 <= sim.vague_rate <= 1.0, "simulate.vague_rate", f"must be within [0, 1], got {sim.vague_rate}")
    check(sim.vague_rate == 0.0 or (p.distill.captioner == "scene" and p.distill.reasoner == "programmatic"),
          "simulate.vague_rate", "a weak captioner is simulated only for distill.captioner=scene with distill.reasoner=programmatic")
    if sim.vague_families is not None:
        unknown = [f for f in sim.vague_families if f not in FAMILIES]
        check(bool(sim.vague_families) and not unknown, "simulate.vague_families",
              f"expected a non-empty list of {', '.join(FAMILIES)} (or null for all), got {sim.vague_families!r}")
    if p.mode == "distill":
        check(p.distill.k >= 1, "distill.k", f"must be >= 1, got {p.distill.k}")
        if p.distill.captioner == "engine":
            check(bool(p.distill.captioner_model), "distill.captioner_model", "captioner=engine needs a model folder")
        if p.distill.reasoner == "engine":
            check(bool(p.distill.reasoner_model), "distill.reasoner_model", "reasoner=engine needs a model folder")
            check("{caption}" in p.distill.reasoner_prompt and "{question}" in p.distill.reasoner_prompt,
                  "distill.reasoner_prompt", "must contain {caption} and {question}")
    else:
        check(bool(p.self_improve.model_path), "self_improve.model_path", "mode=self_improve needs the GRPO model folder")
        check(p.self_improve.k >= 1, "self_improve.k", f"must be >= 1, got {p.self_improve.k}")
    f = p.filters
    check(f.max_words >= 0, "filters.max_words", f"must be >= 0, got {f.max_words}")
    for stage in ("sft", "rl"):
        total = getattr(p.mix, f"{stage}_total")
        check(total >= 0, f"mix.{stage}_total", f"must be >= 0, got {total}")
        for e in getattr(p.mix, stage):
            check(bool(e.source), f"mix.{stage}", "an entry has no source")
            if total > 0:
                check(e.weight > 0 and e.count == 0, f"mix.{stage}",
                      f"{e.source}: with {stage}_total > 0 give a weight > 0 and no count")
            else:
                check(e.count > 0 and e.weight == 0, f"mix.{stage}",
                      f"{e.source}: with {stage}_total = 0 give a count > 0 and no weight")
    if p.difficulty.enabled:
        check(bool(p.difficulty.model_path), "difficulty.model_path", "difficulty selection needs a model folder")
        check(p.difficulty.n >= 2, "difficulty.n", f"must be >= 2 (1..n-1 correct), got {p.difficulty.n}")
    check(p.shard_size >= 1, "shard_size", f"must be >= 1, got {p.shard_size}")
    check(p.batch_size >= 1, "batch_size", f"must be >= 1, got {p.batch_size}")
    check(p.num_engines >= 1, "num_engines", f"must be >= 1, got {p.num_engines}")
    for i, s in enumerate(p.sources):
        check(bool(s.name) and bool(s.path), f"sources[{i}]", "needs a name and a path")


def check_prepare_models(p: PrepareConfig) -> None:
    """The model settings this preparation will load name models this machine has (a folder with
    config.json, tiny/tiny-pretrained or a cached Hub id; ovlt_rl/models/paths.py). Run when the
    preparation starts, not in `validate_prepare`: a cycle builds iteration 2's config (whose
    sampler is iteration 1's GRPO model) before that model exists."""
    d = p.distill
    if p.mode == "distill":
        if d.captioner == "engine":
            check_model_path(d.captioner_model, "prepare.distill.captioner_model")
        if d.reasoner == "engine":
            check_model_path(d.reasoner_model, "prepare.distill.reasoner_model")
    else:
        check_model_path(p.self_improve.model_path, "prepare.self_improve.model_path")
    if p.difficulty.enabled:
        check_model_path(p.difficulty.model_path, "prepare.difficulty.model_path")
