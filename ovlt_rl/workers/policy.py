"""The policy worker: one rank of the FSDP2 group that trains the model (GRPO and SFT).

Each worker is a Ray actor holding a shard of the policy (and, when the KL loss is on, a shard of
a frozen reference copy). All ranks of a group are called together by the driver with their own
share of the batch; every call below that runs the model is a collective (FSDP all-gathers
parameters per unit), so every rank must get the same number of micro-batches.

FSDP2 layout: `fully_shard` on each decoder layer, on the vision tower as its own unit (it runs
outside the decoder, and `generate`-style calls reach it separately), then on the root. The root
is `_Forward`, a thin module whose forward is the whole per-token log-prob computation, so that
FSDP's root hooks gather the embedding, final norm and LM head around it.

Micro-batches (`_plan`): `actor.micro_batch_size` samples each, or as many as fit
`actor.max_tokens_per_micro_batch` tokens; padded rows (`build_batch`) or, with
`actor.padding_free`, one packed row per micro-batch (`pack_batch`, attention within each sample
only). Before running them the ranks agree on one count (an all-reduce of the largest), and a rank
with fewer splits its largest micro-batches, so the collectives match. The loss of every
micro-batch is divided by the whole mini-batch's denominator, so the sum of their gradients is the
mini-batch's gradient however the samples were grouped.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.constants import default_pg_timeout

from ovlt_rl.algos import kl_loss, masked_nll, policy_loss
from ovlt_rl.config import ActorConfig, Config, ModelConfig
from ovlt_rl.models.dtype import resolve_dtype
from ovlt_rl.workers.packed_attention import kernel_for, use_packed_attention
from ovlt_rl.workers.packing import mrope_positions, over_budget, pack_batch, plan_micro_batches, split_to_count
from ovlt_rl.workers.rendezvous import tcp_store
from ovlt_rl.models.sequences import build_batch, predicted_tokens, token_logprobs

log = logging.getLogger(__name__)


class _Forward(nn.Module):
    """Root FSDP unit: per-token log-probs (and entropy) of a batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any], *, temperature: float, with_entropy: bool = False, entropy_grad: bool = False):
        return token_logprobs(self.model, batch, with_entropy=with_entropy, entropy_grad=entropy_grad, temperature=temperature)


def shard_model(model: nn.Module, *, mp_dtype: torch.dtype | None, reshard_after_forward: bool = True, mesh=None) -> _Forward:
    """Wrap a Qwen2.5-VL model with FSDP2 (per decoder layer, vision tower, root); `mesh`: see workers/mesh.py."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32) if mp_dtype is not None else MixedPrecisionPolicy()
    kw = dict(mp_policy=mp, reshard_after_forward=reshard_after_forward, mesh=mesh)
    for layer in model.model.language_model.layers:
        fully_shard(layer, **kw)
    fully_shard(model.model.visual, **kw)
    root = _Forward(model)
    fully_shard(root, **kw)
    return root


def lr_lambda(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step `step` (linear warmup, then constant or cosine)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def worker_settings(cfg: Config) -> dict[str, Any]:
    """What a PolicyWorker gets of the config (its keyword arguments): its own sections (model,
    actor) and, of the others, `device` (trainer.device), the `seed` of its initialisation
    (trainer.seed) and whether it holds a reference copy for the KL loss."""
    return dict(model=cfg.model, actor=cfg.actor, device=cfg.trainer.device, seed=cfg.trainer.seed,
                with_reference=cfg.actor.use_kl_loss)


class PolicyWorker:
    """One FSDP2 rank. Created as a Ray actor by `ovlt_rl.workers.group.PolicyGroup`."""

    def __init__(self, model_path: str, rank: int, world_size: int, master_addr: str, master_port: int, *,
                 model: ModelConfig, actor: ActorConfig, device: str, seed: int, with_reference: bool):
        torch.set_num_threads(int(os.environ.get("OVLT_TORCH_THREADS", "1")))
        self.model_cfg, self.actor = model, actor
        self.seed, self.with_reference = seed, with_reference
        self.rank, self.world = rank, world_size
        self.model_path = model_path
        use_cuda = torch.cuda.is_available() and device != "cpu"
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        from ovlt_rl.workers.network import choose_gloo_interface, this_node

        self.node_ip, self.node_id = this_node(master_addr)
        choose_gloo_interface(self.node_ip)  # gloo on the network Ray reaches this node on
        # Our own store: torch's default one (MASTER_ADDR/MASTER_PORT) listens on every interface.
        store = tcp_store(master_addr, master_port, world_size, is_master=rank == 0, timeout=default_pg_timeout)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world_size,
            device_id=self.device if use_cuda else None,
        )
        self.opt_steps = 0

    # -- set-up ----------------------------------------------------------------------------------

    def setup(self, total_opt_steps: int) -> dict[str, Any]:
        """Load the model (and reference copy), shard, and build the optimizer and lr schedule."""
        from ovlt_rl.models.loading import compile_decoder_layers, enable_gradient_checkpointing, load_model

        m, a = self.model_cfg, self.actor
        torch.manual_seed(self.seed)
        compute_dtype = resolve_dtype(m.dtype, self.device)
        mp = compute_dtype if compute_dtype != torch.float32 else None

        model = load_model(self.model_path, dtype=torch.float32, device=self.device, attn_implementation=m.attn_implementation)
        n_params = sum(p.numel() for p in model.parameters())
        if m.freeze_vision_tower:
            for p in model.model.visual.parameters():
                p.requires_grad_(False)
        if m.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.config.use_cache = False
        self.hf_config = model.config
        self._prepare_attention(model, compute_dtype)
        if a.compile:
            compile_decoder_layers(model)
        # mRoPE positions of a sample alone (for packed rows): a pure function of the config.
        self._positions = functools.partial(mrope_positions, model.model)
        from ovlt_rl.workers.mesh import policy_mesh

        self.mesh = policy_mesh(a.sharding, self.device.type, self.node_id)
        self.policy = shard_model(model, mp_dtype=mp, reshard_after_forward=a.reshard_after_forward, mesh=self.mesh)
        self.policy.train()

        self.ref = None
        if self.with_reference:
            ref = load_model(self.model_path, dtype=torch.float32, device=self.device, attn_implementation=m.attn_implementation)
            ref.requires_grad_(False)
            # The reference never trains, so it keeps its parameters in the compute dtype: half the
            # memory under bf16 (7.5 GB less for a 3B model), and the same numbers, since mixed
            # precision casts the policy's fp32 parameters to that dtype for every forward anyway
            # (buffers, e.g. the rotary frequencies, stay as loaded, as they do in the policy).
            for p in ref.parameters():
                p.data = p.data.to(compute_dtype)
            self._prepare_attention(ref, compute_dtype)
            if a.compile:
                compile_decoder_layers(ref)
            self.ref = shard_model(ref, mp_dtype=mp, mesh=self.mesh)
            self.ref.eval()

        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            trainable, lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay, fused=fused
        )
        from ovlt_rl.workers.offload import OptimizerOffload

        self.optimizer_offload = OptimizerOffload(self.optimizer)
        warmup = int(a.warmup_ratio * total_opt_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, total=total_opt_steps, warmup=warmup, schedule=a.lr_schedule, min_ratio=a.min_lr_ratio),
        )
        return {"params": n_params, "trainable": sum(p.numel() for p in trainable), "device": str(self.device)}

    def _prepare_attention(self, model: nn.Module, compute_dtype: torch.dtype) -> None:
        """With attn_implementation "sdpa":
        - the vision tower attends with ovlt's window attention (`ovlt_rl.models.vision_attention`:
          one varlen flash call per layer on GPU, one SDPA per window length otherwise) instead of
          transformers' one SDPA call per window, in padded and packed runs alike (it always
          attends within windows);
        - packed rows need text attention that stays within each sample: flash_attention_2 and
          eager do that by themselves from the position ids (varlen kernel, block-diagonal mask);
          sdpa is switched to ovlt's packed attention (torch's varlen flash kernel on GPU, SDPA per
          sample otherwise), which runs padded batches exactly like sdpa.
        The kernels are probed here, outside any forward (each runs a tiny backward)."""
        from ovlt_rl.models.vision_attention import kernel_for as vision_kernel_for
        from ovlt_rl.models.vision_attention import use_window_attention

        if self.model_cfg.attn_implementation != "sdpa":
            return
        use_window_attention(model)
        log.info("rank %d: vision windows attend with %s", self.rank, vision_kernel_for(self.device.type, compute_dtype))
        if self.actor.padding_free:
            use_packed_attention(model)
            log.info("rank %d: packed rows attend with %s", self.rank, kernel_for(self.device.type, compute_dtype))

    # -- micro-batches -----------------------------------------------------------------------------

    def _max_over_ranks(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _plan(self, samples: list[dict[str, Any]], micro_batch_size: int, max_tokens: int) -> list[tuple[list[int], bool]]:
        """(sample indices, is_dummy) of each micro-batch; the same count on every rank (a collective)."""
        padded = not self.actor.padding_free
        lengths = [len(s["input_ids"]) for s in samples]
        groups = plan_micro_batches(lengths, micro_batch_size=micro_batch_size, max_tokens=max_tokens, padded=padded)
        long = over_budget(lengths, max_tokens)
        if long:
            log.warning("rank %d: %d of %d samples are longer than the token budget %d; each runs as its own micro-batch",
                        self.rank, long, len(samples), max_tokens)
        groups, dummies = split_to_count(groups, lengths, self._max_over_ranks(len(groups)), padded=padded)
        plan = [(g, False) for g in groups]
        if dummies:
            if not samples:
                raise ValueError(f"rank {self.rank} got no samples while other ranks have work; give every rank at least one")
            # A real sample whose loss counts 0: the same collectives (vision tower included) as the others'.
            shortest = min(range(len(samples)), key=lambda i: lengths[i])
            plan += [([shortest], True)] * dummies
        return plan

    def _batch(self, chunk: list[dict[str, Any]], keys: tuple[str, ...] = ()) -> dict[str, Any]:
        if self.actor.padding_free:
            batch = pack_batch(chunk, self._pad_id(), self._positions, per_token_keys=keys)
        else:
            batch = build_batch(chunk, self._pad_id(), per_token_keys=keys)
        return self._to_device(batch)

    # -- log-probs ---------------------------------------------------------------------------------

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _pad_id(self) -> int:
        pad = getattr(self.hf_config, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.hf_config.get_text_config(), "pad_token_id", None)
        return 0 if pad is None else int(pad)

    @torch.no_grad()
    def compute_logprobs(self, samples: list[dict[str, Any]], *, which: str, micro_batch_size: int,
                         temperature: float) -> list[torch.Tensor]:
        """Per-token log-probs (aligned with input_ids) of each sample under the policy or the reference,
        at `temperature` (GRPO: the rollout's sampling temperature; 1: the model's own distribution).

        Micro-batches of `micro_batch_size` samples, or by actor.logprob_max_tokens_per_micro_batch
        (else actor.max_tokens_per_micro_batch) tokens when set.
        """
        module = self.policy if which == "policy" else self.ref
        if module is None:
            raise RuntimeError(f"compute_logprobs({which!r}): no such model on this worker")
        a = self.actor
        was_training = module.training
        module.eval()
        out: list[torch.Tensor | None] = [None] * len(samples)
        for idx, dummy in self._plan(samples, micro_batch_size, a.logprob_max_tokens_per_micro_batch or a.max_tokens_per_micro_batch):
            chunk = [samples[i] for i in idx]
            lp, _ = module(self._batch(chunk), temperature=temperature)
            if dummy:
                continue
            for row, i in enumerate(idx):
                out[i] = lp[row, : len(samples[i]["input_ids"])].float().cpu()
        module.reshard()
        module.train(was_training)
        return out

    # -- updates ---------------------------------------------------------------------------------

    def offload_optimizer(self) -> int:
        """Move the optimizer state to host memory until the next step (actor.offload_optimizer); bytes moved."""
        return self.optimizer_offload.offload()

    def _step_optimizer(self) -> tuple[float, bool]:
        """Clip, then step unless the grad norm is non-finite (then skip and count). Collective."""
        self.optimizer_offload.reload()  # no-op unless offload_optimizer moved the state out
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.policy.parameters() if p.requires_grad], self.actor.grad_clip
        )
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        gn = float(grad_norm)
        ok = math.isfinite(gn)
        if ok:
            self.optimizer.step()
            self.scheduler.step()
            self.opt_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return gn, ok

    def update_policy(self, samples: list[dict[str, Any]], *, denominator: float, temperature: float) -> dict[str, float]:
        """One optimizer step of the GRPO loss over this rank's share of a mini-batch.

        `denominator`: the loss normaliser of the whole mini-batch across ranks (tokens for
        token-mean), so that accumulated micro-batch gradients, averaged by FSDP over ranks,
        equal the gradient of the mini-batch's loss. `temperature`: the one the samples were drawn
        at and their old/reference log-probs computed at (the policy optimised is softmax(logits / T)).
        Samples without "old_logprobs" are on-policy (this is the one update since they were drawn):
        their old log-probs are this forward pass's, detached, which saves a forward pass over the batch.
        """
        a = self.actor
        on_policy = "old_logprobs" not in samples[0]
        keys = ("advantages",) + (() if on_policy else ("old_logprobs",)) + (("ref_logprobs",) if self.ref is not None else ())
        scale = self.world / denominator  # FSDP averages over ranks
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        # The sum of the micro-batches' gradients doesn't depend on how samples are grouped.
        for idx, dummy in self._plan(samples, a.micro_batch_size, a.max_tokens_per_micro_batch):
            batch = self._batch([samples[i] for i in idx], keys)
            logp, ent = self.policy(batch, temperature=temperature, with_entropy=True, entropy_grad=bool(a.entropy_coef))
            mask = predicted_tokens(batch["loss_mask"])
            if dummy:
                (logp[mask].sum() * 0.0).backward()
                continue
            pg, m = policy_loss(
                logp, logp.detach() if on_policy else batch["old_logprobs"], batch["advantages"], mask,
                clip_low=a.clip_ratio_low, clip_high=a.clip_ratio_high,
                dual_clip=a.clip_ratio_dual or None, agg=a.loss_agg_mode, denominator=1.0,
            )
            loss = pg
            if self.ref is not None:
                kl = kl_loss(logp, batch["ref_logprobs"], mask, a.kl_type, a.loss_agg_mode, denominator=1.0)
                loss = loss + a.kl_coef * kl
                _acc(sums, "actor/kl_loss", float(kl.detach()) / denominator)
            ent_sum = (ent * mask).sum()
            if a.entropy_coef:
                loss = loss - a.entropy_coef * ent_sum
            (loss * scale).backward()
            tokens = float(mask.sum())
            _acc(sums, "actor/pg_loss", float(pg.detach()) / denominator)
            _acc(sums, "actor/entropy_sum", float(ent_sum.detach()))
            _acc(sums, "actor/tokens", tokens)
            for k, v in m.items():
                _acc(sums, f"actor/{k}_wsum", float(v) * tokens)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm, ok = self._step_optimizer()
        sums.update({"actor/grad_norm": grad_norm, "actor/lr": lr, "actor/skipped": 0.0 if ok else 1.0,
                     "actor/update_s": time.perf_counter() - t0})
        return sums

    def sft_step(self, samples: list[dict[str, Any]], *, denominator: float) -> dict[str, float]:
        """One optimizer step of masked cross-entropy (assistant tokens only) over this rank's share."""
        a = self.actor
        scale = self.world / denominator
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for idx, dummy in self._plan(samples, a.micro_batch_size, a.max_tokens_per_micro_batch):
            batch = self._batch([samples[i] for i in idx])
            logp, _ = self.policy(batch, temperature=1.0)  # the model's own distribution
            mask = predicted_tokens(batch["loss_mask"])
            if dummy:
                (logp[mask].sum() * 0.0).backward()
                continue
            nll = masked_nll(logp, mask, denominator=1.0)
            (nll * scale).backward()
            _acc(sums, "sft/nll_sum", float(nll.detach()))
            _acc(sums, "sft/tokens", float(mask.sum()))
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm, ok = self._step_optimizer()
        sums.update({"sft/grad_norm": grad_norm, "sft/lr": lr, "sft/skipped": 0.0 if ok else 1.0,
                     "sft/update_s": time.perf_counter() - t0})
        return sums

    @torch.no_grad()
    def eval_nll_per_sample(self, samples: list[dict[str, Any]]) -> list[tuple[float, float]]:
        """Per sample: (sum of token NLL over its loss mask, token count), for the validation loss."""
        lps = self.compute_logprobs(samples, which="policy", micro_batch_size=self.actor.micro_batch_size, temperature=1.0)
        out = []
        for lp, s in zip(lps, samples):
            m = predicted_tokens(s["loss_mask"])
            out.append((float(-(lp[m]).sum()), float(m.sum())))
        return out

    # -- weights and checkpoints -------------------------------------------------------------------

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full (unsharded) HF state dict on CPU; a collective, only rank 0 gets tensors."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return None
        # Names are the HF model's, under the root wrapper's `model.` prefix.
        return {k[len("model.") :]: v for k, v in sd.items()}

    def init_weight_sync(self, host: str, port: int, world_size: int) -> None:
        """Policy rank 0 joins the NCCL sync group as its rank 0; other ranks only take part in the all-gathers."""
        from ovlt_rl.workers.weight_sync import init_sync_group

        self.sync_pg = init_sync_group(host, port, 0, world_size, self.device) if self.rank == 0 else None

    def send_weights(self, dtype_name: str) -> int:
        """Broadcast the full weights to the rollout workers (a collective over the FSDP group too)."""
        from ovlt_rl.workers.weight_sync import send_weights

        dtype = resolve_dtype(dtype_name, self.device)
        return send_weights(self.sync_pg, self.policy.model, self.rank, dtype, self.device)

    def ipc_begin(self, dtype_name: str, bucket_bytes: int) -> None:
        """Start a colocated weight sync (every rank) in model.dtype `dtype_name`: chunks come from
        `ipc_next` (ovlt_rl/workers/ipc_sync.py)."""
        from ovlt_rl.workers.ipc_sync import weight_chunks

        dtype = resolve_dtype(dtype_name, self.device)
        self._ipc_chunks = weight_chunks(self.policy.model, dtype, self.device, bucket_bytes)

    def ipc_next(self) -> dict[str, Any] | None:
        """The next chunk's description, after vLLM has read the previous one; None at the end."""
        chunk = next(self._ipc_chunks, None)
        if chunk is None:
            self._ipc_chunks = None
        return chunk

    def save_hf(self, out_dir: str, *, max_shard_size: str) -> str | None:
        """Write the model in HF format, in safetensors shards of at most `max_shard_size` (rank 0 writes; collective)."""
        sd = self.full_state_dict()
        if self.rank == 0:
            from ovlt_rl.workers.export import save_hf_model

            dtype = resolve_dtype(self.model_cfg.dtype, self.device)  # the training dtype
            save_hf_model(self.model_path, sd, out_dir, dtype=dtype, max_shard_size=max_shard_size)
            return out_dir
        return None

    def save_checkpoint(self, path: str) -> None:
        """Sharded model + optimizer state into `path` as safetensors + JSON (collective; see sharded_state)."""
        from ovlt_rl.workers.sharded_state import save_state

        # The training dtype as resolved on this device (model.dtype=auto depends on it), for `ovlt export`.
        dtype = {torch.bfloat16: "bf16", torch.float32: "fp32"}[resolve_dtype(self.model_cfg.dtype, self.device)]
        offloaded = self.optimizer_offload.offloaded
        self.optimizer_offload.reload()  # the state is saved from where the update uses it
        save_state(path, self.policy, self.optimizer, self.rank, self.world,
                   {"scheduler_last_epoch": self.scheduler.last_epoch, "opt_steps": self.opt_steps, "dtype": dtype})
        if offloaded:  # back out of the way of generation until the next update
            self.optimizer_offload.offload()
        dist.barrier()

    def load_checkpoint(self, path: str) -> dict[str, int]:
        """Load what save_checkpoint wrote (collective). Reads safetensors and JSON only: nothing in
        the output folder is unpickled."""
        from ovlt_rl.workers.sharded_state import load_state

        self.optimizer_offload.reload()
        state = load_state(path, self.policy, self.optimizer, self.world)
        if self.actor.offload_optimizer:  # as after an update: in host memory until the next one
            self.optimizer_offload.offload()
        self.opt_steps = int(state["opt_steps"])
        # Recreate the lr schedule position: LambdaLR's lr is a pure function of last_epoch.
        self.scheduler.last_epoch = int(state["scheduler_last_epoch"])
        for g, base, lam in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            g["lr"] = base * lam(self.scheduler.last_epoch)
        return {"opt_steps": self.opt_steps}

    def ready(self) -> bool:
        return True

    def check_shared_storage(self, folder: str, token: str) -> tuple[str, str | None]:
        """(this node's address, what is wrong with `folder` from here or None): workers/shared_storage.py."""
        from ovlt_rl.workers.shared_storage import rank_check

        return self.node_ip, rank_check(folder, token, self.rank)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _acc(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value
