"""The vLLM rollout engine: one offline `vllm.LLM` per rollout worker, behind the engine interface.

    check_vllm_version()                    # RuntimeError if the installed vLLM is outside SUPPORTED
    engine = VLLMEngine(cfg, model_path)
    groups = engine.generate(prompts, SamplingParams(n=5, max_new_tokens=512))
    engine.load_state_dict(state_dict)      # weights in buckets through collective_rpc, never via disk

vLLM is imported lazily (inside functions) so this module imports where vLLM is absent (CPU
machines, tests); `make_engine` then falls back to the transformers engine.

Weight sync uses vLLM's supported RL hook of the pinned range: a worker extension class
(`worker_extension_cls`) whose methods run inside every vLLM worker process, called with
`llm.collective_rpc(name, args=...)`. Two paths:
- tensors (`load_state_dict`): CPU tensors from the object store, sent in buckets as RPC arguments,
  loaded with the model's own `load_weights` (which maps HF names and shards for tensor parallelism);
- NCCL (`init_weight_sync_group` + `update_weights_from_nccl`): policy rank 0 joins a process group
  with the vLLM workers (`trainer_weight_sync_group`) and broadcasts each tensor (`broadcast_weights`).
After either, the prefix cache is reset: cached KV blocks were computed with the old weights.

Sleep mode (colocated rollout and policy on one GPU, `0 < rollout.gpus_per_worker < 1`): `sleep()`
frees the KV cache and moves weights to CPU between generations; the engine wakes itself up
before generating or loading weights.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from ovlt_rl.engines.base import Generation, SamplingParams, forbidden_token_ids

SUPPORTED = ("0.10.2", "0.12")
"""vLLM versions this module is written against: min inclusive, max exclusive (pre-releases of max excluded)."""

EXTENSION = "ovlt_rl.engines.vllm_engine.OvltWorkerExtension"
IMAGE_PLACEHOLDER = "<|image_pad|>"
"""Qwen2.5-VL's per-image placeholder in the chat-templated prompt; vLLM expands each one itself."""
BUCKET_BYTES = 512 << 20


def _release(version: str) -> tuple[int, ...]:
    from packaging.version import Version

    return Version(version).release


def check_vllm_version(installed: str | None = None) -> str:
    """The installed vLLM version if it is in SUPPORTED; ImportError if vLLM is absent."""
    if installed is None:
        from importlib.metadata import version  # PackageNotFoundError is an ImportError

        installed = version("vllm")
    lo, hi = SUPPORTED
    if not (_release(lo) <= _release(installed) < _release(hi)):
        raise RuntimeError(
            f"vLLM {installed} is installed, but ovlt's vLLM engine supports vLLM >={lo},<{hi} "
            f"(worker_extension_cls + collective_rpc weight sync); install a supported version "
            f"or set rollout.engine=hf"
        )
    return installed


def vllm_dtype(dtype: str) -> str:
    """model.dtype -> vLLM's dtype name (vLLM only runs on GPUs, so "auto" is bf16)."""
    table = {"auto": "bfloat16", "bf16": "bfloat16", "fp32": "float32"}
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


def buckets(tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of at most `max_bytes` (a bigger tensor goes alone)."""
    bucket, size = [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


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


class OvltWorkerExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); methods run there via collective_rpc.

    Names carry an `ovlt_` prefix: vLLM refuses extension attributes that clash with the worker's.
    `self.device` and `self.model_runner` are the worker's own.
    """

    def ovlt_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        model = self.model_runner.model
        model.load_weights(weights=[(n, t.to(self.device, non_blocking=True)) for n, t in weights])
        torch.cuda.synchronize(self.device)
        return len(weights)

    def ovlt_init_sync_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        from vllm.distributed.parallel_state import get_world_group

        rank = rank_offset + get_world_group().rank
        self.ovlt_sync_group = _stateless_nccl_group(master_address, master_port, rank, world_size, self.device)

    def ovlt_receive_weights(self, meta: list[tuple[str, str, list[int]]]) -> int:
        model = self.model_runner.model
        for name, dtype, shape in meta:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self.ovlt_sync_group.broadcast(buf, src=0, stream=torch.cuda.current_stream())
            model.load_weights(weights=[(name, buf)])
        return len(meta)

    def ovlt_weights_checksum(self) -> float:
        return float(sum(p.float().sum().item() for p in self.model_runner.model.parameters()))


def _stateless_nccl_group(master_address: str, master_port: int, rank: int, world_size: int, device):
    """An NCCL communicator outside torch.distributed's global group (vLLM's StatelessProcessGroup)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    pg = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(pg, device=device)


def trainer_weight_sync_group(master_address: str, master_port: int, world_size: int, device):
    """Policy rank 0's side of the NCCL weight-sync group (rank 0; vLLM workers are 1..world_size-1)."""
    return _stateless_nccl_group(master_address, master_port, 0, world_size, device)


def broadcast_weights(group, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Send each tensor (on policy rank 0's GPU) to the vLLM workers, in `weight_meta` order."""
    for _, t in tensors:
        group.broadcast(t, src=0, stream=torch.cuda.current_stream())


def weight_meta(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each tensor: what the receiving side allocates."""
    return [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in tensors]


class VLLMEngine:
    """An offline `vllm.LLM` configured from the ovlt config tree."""

    def __init__(self, cfg, model_path: str, *, bucket_bytes: int = BUCKET_BYTES):
        from vllm import LLM

        r, d = cfg.rollout, cfg.data
        self.max_images = r.limit_images_per_prompt
        self.bucket_bytes = bucket_bytes
        self.sleep_mode = 0 < r.gpus_per_worker < 1  # a GPU shared with the policy: free it between uses
        self.asleep: set[str] = set()
        self.llm = LLM(
            model=model_path,
            dtype=vllm_dtype(cfg.model.dtype),
            tensor_parallel_size=r.tensor_parallel_size,
            # The rollout actor already holds its GPUs; keep vLLM's workers in its own processes.
            distributed_executor_backend="mp" if r.tensor_parallel_size > 1 else None,
            gpu_memory_utilization=r.gpu_memory_utilization,
            enable_prefix_caching=r.enable_prefix_caching,
            limit_mm_per_prompt={"image": r.limit_images_per_prompt},
            mm_processor_kwargs={"min_pixels": d.min_pixels, "max_pixels": d.max_pixels},
            max_model_len=d.max_prompt_length + d.max_response_length + 1,  # +1: compute_logprobs samples one token
            seed=r.seed,
            logprobs_mode="processed_logprobs",  # after temperature/top-p: the sampling distribution
            worker_extension_cls=EXTENSION,
            enable_sleep_mode=self.sleep_mode,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.forbidden = forbidden_token_ids(self.tokenizer)

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        from vllm import SamplingParams as VSamplingParams

        self.wake_up()
        outs = self.llm.generate([build_prompt(p, self.max_images) for p in prompts],
                                 VSamplingParams(**vllm_sampling_kwargs(params, self.forbidden)), use_tqdm=False)
        return [[to_generation(o, params.logprobs) for o in req.outputs] for req in outs]

    def compute_logprobs(self, prompts: list[dict[str, Any]], responses: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs (temperature 1) of each response given its prompt, via prompt_logprobs."""
        from vllm import SamplingParams as VSamplingParams

        self.wake_up()
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
        """Send HF-named tensors to every vLLM worker in buckets; returns how many were loaded."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        self.wake_up(tags=["weights"])
        n = 0
        for bucket in buckets(items, self.bucket_bytes):
            n += self.llm.collective_rpc("ovlt_load_weights", args=([(k, v.detach().cpu()) for k, v in bucket],))[0]
        self.llm.reset_prefix_cache()
        return n

    def init_weight_sync_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """Join the NCCL group of policy rank 0 (rank 0) and all vLLM workers; call while rank 0 joins."""
        self.llm.collective_rpc("ovlt_init_sync_group", args=(master_address, master_port, rank_offset, world_size))

    def update_weights_from_nccl(self, meta: list[tuple[str, str, list[int]]]) -> int:
        """Receive the tensors named in `meta` from policy rank 0's `broadcast_weights` (same order)."""
        self.wake_up(tags=["weights"])
        n = self.llm.collective_rpc("ovlt_receive_weights", args=(meta,))[0]
        self.llm.reset_prefix_cache()
        return n

    def weights_checksum(self) -> float:
        return self.llm.collective_rpc("ovlt_weights_checksum")[0]

    # -- sleep mode (colocated) ------------------------------------------------------------

    def sleep(self) -> None:
        """Free the KV cache and move weights to CPU (level 1), so the policy can use the GPU."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring back what is asleep among `tags` (None: everything); waking an awake part is an error in vLLM."""
        todo = sorted(self.asleep if tags is None else self.asleep & set(tags))
        if todo:
            self.llm.wake_up(tags=todo)
            self.asleep -= set(todo)
