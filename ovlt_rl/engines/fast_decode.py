"""The hf engine's fast generation path: HF prefill, then our own decode loop over a static KV cache.

Why: transformers `generate` spends most of a decode step outside the GPU's memory-bound work
(a growing cache copied with torch.cat every step, mask building, logits processors, a host sync
per step, hundreds of small kernel launches). Here a decode step is a fixed-shape computation over
preallocated buffers, so on CUDA it is captured once in a CUDA graph and replayed; the host only
replays and, every `CHECK_EVERY` steps, asks whether all rows are finished.

How it works, per batch of B sequences (prompts x n samples):
1. Prefill with the HF model itself, a few prompts at a time: images, the embedding merge and the
   3-D mRoPE positions (`get_rope_index`, the model's own code) are exactly what `generate` does,
   except that the vision tower's windowed attention runs batched (`ovlt_rl.models.vision_attention`).
   Each prompt's keys/values are copied from the HF cache into the static cache, right-aligned so
   every prompt ends at column P-1 (P = the longest prompt), once per sample (n copies); columns a
   prompt doesn't fill are masked. The prefill's last logits give the first token.
2. Decode: each step embeds the last token, runs every layer with the model's weights (RMSNorm,
   q/k/v, rotary, cache write at column `col`, attention over the whole static cache with the
   additive mask, MLP), samples the next token on the GPU and records it. A generated token's mRoPE
   position is text-like (the three components equal), continuing after the prompt's largest
   position (max + 1, i.e. the prompt length plus the model's rope delta), so rotary reduces to
   1-D rotary at that position.
3. Sampling mirrors the plain path's logits processors: repetition penalty, forbidden (vision)
   tokens, then greedy argmax or temperature, top-k, top-p and an exponential race (argmax of
   p / Exp(1) noise, which draws from p without a host sync). Finished rows emit padding.

State lives in a `_Workspace` (cache, mask, token/position/step counters, outputs) reused across
calls while the batch fits, so a graph captured once serves later calls; it is rebuilt when a call
needs more rows or columns, or would waste more than half of it.
Weights are read from the model's parameters at each step (in place), so weight syncs that copy
into the parameters (`HFEngine.load_state_dict`, NCCL `receive_weights`) need no recapture.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ovlt_rl.models.vision_attention import grouped_vision_attention

log = logging.getLogger(__name__)

CHECK_EVERY = 16
"""Decode steps between "are all rows finished?" checks (each check is one host sync)."""
COLUMN_BUCKET = 128
"""Static cache lengths are rounded up to a multiple of this, so calls with similar prompt lengths share a graph."""
PREFILL_TOKENS = 16384
"""Padded prompt tokens per HF prefill forward (bounds the prefill's activation memory)."""
# Decode attention takes an arbitrary additive mask: memory-efficient attention on GPUs (cuDNN's is
# left out: it is not safe to capture in CUDA graphs on every version), the math kernel elsewhere.
_DECODE_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class Mode(NamedTuple):
    """What the sampling part of a step does; one captured graph per mode."""

    greedy: bool
    filtered: bool
    """top-k or top-p active (needs a sort)."""
    penalty: bool
    """repetition penalty != 1."""
    logprobs: bool


def sampling_mode(params) -> Mode:
    greedy = params.temperature <= 0 or params.top_k == 1
    filtered = not greedy and (params.top_k > 0 or params.top_p < 1.0)
    return Mode(greedy, filtered, params.repetition_penalty != 1.0, bool(params.logprobs))


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Logits with tokens outside the top-k (k <= 0: all) and then the top-p nucleus set to -inf.

    `top_k` and `top_p` are 1-element tensors, so one captured graph serves any values. Ties with
    the last kept logit are kept (as transformers' top-k does).
    """
    vocab = logits.shape[-1]
    sorted_logits = logits.sort(dim=-1, descending=True).values
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    in_k = ranks < k
    sorted_logits = sorted_logits.masked_fill(~in_k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    keep = in_k & (mass_before < top_p)  # a prefix of the sorted order; the top token always stays
    n_keep = keep.sum(dim=-1, keepdim=True).clamp(min=1)
    threshold = sorted_logits.gather(-1, n_keep - 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


def sample_tokens(
    logits: torch.Tensor,
    mode: Mode,
    *,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    penalty: torch.Tensor,
    seen: torch.Tensor | None,
    forbidden: torch.Tensor | None,
) -> torch.Tensor:
    """One token per row of fp32 `logits` [B, V], on the device, without host syncs.

    Order as in transformers: repetition penalty (tokens in `seen`: negative logits times the
    penalty, positive ones divided by it), forbidden tokens, then greedy argmax, or temperature,
    top-k/top-p and a draw from the softmax.
    """
    if mode.penalty:
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, penalised, logits)
    if forbidden is not None:
        logits = logits.index_fill(1, forbidden, float("-inf"))
    if mode.greedy:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if mode.filtered:
        logits = filter_top_k_top_p(logits, top_k, top_p)
    probs = logits.softmax(dim=-1)
    # Exponential race: argmax(p / E) with E ~ Exp(1) is a draw from p. The clamp keeps a zero
    # draw from turning a forbidden token's 0/0 into NaN (which argmax would pick).
    noise = torch.empty_like(probs).exponential_().clamp_(min=1e-20)
    return (probs / noise).argmax(dim=-1)


@dataclass
class _Workspace:
    """Buffers of one batch shape: B rows, S cache columns, T output tokens."""

    rows: int
    columns: int
    max_tokens: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    """[B, 1, 1, S] additive attention mask (0 attend, -inf not)."""
    tokens: torch.Tensor
    """[B] the last sampled token: the next step's input."""
    positions: torch.Tensor
    """[B] rotary position of the next input token."""
    column: torch.Tensor
    """[1] cache column the next input token is written to."""
    step: torch.Tensor
    """[1] output index of the next sampled token."""
    finished: torch.Tensor
    out_tokens: torch.Tensor
    out_logprobs: torch.Tensor
    seen: torch.Tensor | None
    temperature: torch.Tensor
    logprob_temperature: torch.Tensor
    """[1] the temperature of the reported log-probs: the sampling one, or 1 when greedy."""
    top_k: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    graphs: dict
    pool: Any = None


class StaticCacheDecoder:
    """Generates for a Qwen2.5-VL model (`Qwen2_5_VLForConditionalGeneration`) with a static KV cache.

    `cuda_graphs` (default: on for CUDA models) captures the decode step; without it the same step
    runs eagerly (CPU, tests). `prefill_tokens` bounds the padded tokens of one prefill forward.
    `compile` names a torch.compile backend for the per-layer parts around attention (None: eager).
    """

    def __init__(self, model, *, eos_ids: list[int], pad_id: int, forbidden: list[int],
                 cuda_graphs: bool | None = None, prefill_tokens: int = PREFILL_TOKENS, compile: str | None = None):
        self.model = model
        text = model.model.language_model
        self.embed = text.embed_tokens
        self.layers = text.layers
        self.norm = text.norm
        self.lm_head = model.lm_head
        rotary = text.rotary_emb
        cfg = model.config.get_text_config()
        _check_supported(cfg, rotary)
        self.inv_freq = rotary.inv_freq
        self.rope_scale = float(rotary.attention_scaling)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_kv = cfg.num_key_value_heads
        self.n_heads = cfg.num_attention_heads
        self.scaling = attn.scaling
        self.eps = self.layers[0].input_layernorm.variance_epsilon
        self.device = self.lm_head.weight.device
        self.dtype = self.lm_head.weight.dtype
        self.vocab = self.lm_head.weight.shape[0]
        self.eos = torch.tensor(sorted(eos_ids), device=self.device)
        self.pad_id = pad_id
        self.forbidden = torch.tensor(forbidden, device=self.device, dtype=torch.long) if forbidden else None
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a model on a CUDA device")
        self.prefill_tokens = prefill_tokens
        self.ws: _Workspace | None = None
        self.last_stats: dict = {}
        """Rows, steps and seconds of prefill (first token included) and decode of the last call."""
        # `compile` (a torch.compile backend, e.g. "inductor") fuses the small ops around the matmuls
        # (norms, rotary, SiLU); every layer has the same shapes, so each part compiles once (and once
        # more, with the batch size symbolic, when a second batch size comes).
        self._qkv, self._out = _qkv, _out
        if compile:
            self._qkv = torch.compile(_qkv, backend=compile, fullgraph=True)
            self._out = torch.compile(_out, backend=compile, fullgraph=True)

    # -- public -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: list[dict[str, Any]], params, batch_fn: Callable) -> list[tuple[list[int], list[float] | None]]:
        """(token ids, log-probs or None) of `params.n` samples per prompt, row i*n+j = sample j of prompt i.

        Rows run until EOS or `params.max_new_tokens`; after EOS a row holds padding (cut by the
        caller). Log-probs are those of the sampling distribution before top-k/top-p: log-softmax of
        logits / temperature (temperature 1 when greedy), as `HFEngine.compute_logprobs` gives at
        that temperature, taken in the loop instead of by a second forward.
        `batch_fn(prompts)` collates prompt items into model inputs on the device.
        """
        n, T = params.n, params.max_new_tokens
        if T < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {T}")
        rows = len(prompts) * n
        prompt_width = max(len(p["input_ids"]) for p in prompts)
        mode = sampling_mode(params)
        ws = self._workspace(rows, prompt_width + T, T, mode)
        self._set_params(ws, params)
        graph = self._graph(ws, mode) if self.cuda_graphs else None
        t0 = time.perf_counter()
        first_logits = self._prefill(ws, prompts, n, batch_fn, prompt_width, mode)
        self._sample_and_record(ws, first_logits, mode)
        self._sync()
        t1 = time.perf_counter()
        done = 1
        while done < T:
            if graph is not None:
                graph.replay()
            else:
                self._step(ws, mode)
            done += 1
            if done % CHECK_EVERY == 0 and bool(ws.finished.all()):
                break
        tokens = ws.out_tokens[:rows, :done].tolist()
        lps = ws.out_logprobs[:rows, :done].tolist() if mode.logprobs else [None] * rows
        self.last_stats = {"rows": rows, "steps": done, "prefill_s": t1 - t0, "decode_s": time.perf_counter() - t1}
        return list(zip(tokens, lps))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Free the cache and captured graphs (the next call rebuilds them)."""
        self.ws = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- buffers ------------------------------------------------------------------------------

    def _workspace(self, rows: int, columns: int, max_tokens: int, mode: Mode) -> _Workspace:
        columns = math.ceil(columns / COLUMN_BUCKET) * COLUMN_BUCKET
        ws = self.ws
        fits = ws is not None and rows <= ws.rows and columns <= ws.columns and max_tokens <= ws.max_tokens
        wasteful = ws is not None and (2 * rows < ws.rows or 2 * columns < ws.columns)
        if not fits or wasteful:
            self.ws = None  # free the old buffers before allocating the new ones
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.ws = ws = self._allocate(rows, columns, max_tokens)
        if mode.penalty and ws.seen is None:
            ws.seen = torch.zeros(ws.rows, self.vocab, dtype=torch.bool, device=self.device)
        return ws

    def _allocate(self, B: int, S: int, T: int) -> _Workspace:
        dev, dt = self.device, self.dtype
        shape = (B, self.n_kv, S, self.head_dim)
        # Zeros, not empty: masked columns are multiplied by 0 in attention, and 0 * NaN garbage is NaN.
        keys = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.layers]
        values = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.layers]
        return _Workspace(
            rows=B, columns=S, max_tokens=T, keys=keys, values=values,
            mask=torch.full((B, 1, 1, S), float("-inf"), dtype=dt, device=dev),
            tokens=torch.zeros(B, dtype=torch.long, device=dev),
            positions=torch.zeros(B, dtype=torch.long, device=dev),
            column=torch.zeros(1, dtype=torch.long, device=dev),
            step=torch.zeros(1, dtype=torch.long, device=dev),
            finished=torch.ones(B, dtype=torch.bool, device=dev),
            out_tokens=torch.full((B, T), self.pad_id, dtype=torch.long, device=dev),
            out_logprobs=torch.zeros(B, T, dtype=torch.float32, device=dev),
            seen=None,
            temperature=torch.ones(1, device=dev), logprob_temperature=torch.ones(1, device=dev), top_k=torch.zeros(1, dtype=torch.long, device=dev),
            top_p=torch.ones(1, device=dev), penalty=torch.ones(1, device=dev),
            graphs={}, pool=torch.cuda.graph_pool_handle() if self.cuda_graphs else None,
        )

    def _set_params(self, ws: _Workspace, params) -> None:
        ws.temperature.fill_(max(params.temperature, 1e-6))
        ws.logprob_temperature.fill_(params.logprob_temperature)
        ws.top_k.fill_(params.top_k if params.top_k > 0 else 0)
        ws.top_p.fill_(params.top_p)
        ws.penalty.fill_(params.repetition_penalty)

    # -- prefill ------------------------------------------------------------------------------

    def _prefill(self, ws: _Workspace, prompts, n: int, batch_fn, P: int, mode: Mode) -> torch.Tensor:
        """Fill the cache with the prompts (columns P-len..P-1), reset the state; the first logits [B, V]."""
        B = ws.rows
        ws.mask.fill_(float("-inf"))
        ws.mask[:, :, :, 0] = 0.0  # spare rows (beyond this call's) attend to one column: no NaN rows
        ws.finished.fill_(True)
        ws.out_tokens.fill_(self.pad_id)
        ws.out_logprobs.zero_()
        ws.positions.zero_()
        ws.tokens.fill_(self.pad_id)
        ws.column.fill_(P)
        ws.step.fill_(0)
        if ws.seen is not None:
            ws.seen.zero_()
        logits = torch.zeros(B, self.vocab, dtype=torch.float32, device=self.device)
        per_chunk = max(1, self.prefill_tokens // P)
        for c0 in range(0, len(prompts), per_chunk):
            chunk = prompts[c0 : c0 + per_chunk]
            inputs = batch_fn(chunk)
            positions = rope_positions(self.model, inputs)
            with grouped_vision_attention(self.model):
                out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            L = inputs["input_ids"].shape[1]
            r0, r1 = c0 * n, (c0 + len(chunk)) * n
            for i, (k, v) in enumerate(cache_tensors(out.past_key_values, len(self.layers))):
                ws.keys[i][r0:r1, :, P - L : P] = k.repeat_interleave(n, dim=0)
                ws.values[i][r0:r1, :, P - L : P] = v.repeat_interleave(n, dim=0)
            keep = inputs["attention_mask"].bool().repeat_interleave(n, dim=0)
            ws.mask[r0:r1, 0, 0, :] = float("-inf")
            ws.mask[r0:r1, 0, 0, P - L : P] = torch.zeros_like(keep, dtype=self.dtype).masked_fill(~keep, float("-inf"))
            # Next position: one past the prompt's largest (text follows an image at max + 1).
            nxt = positions.masked_fill(~inputs["attention_mask"].bool()[None], -1).amax(dim=(0, 2)) + 1
            ws.positions[r0:r1] = nxt.repeat_interleave(n)
            ws.finished[r0:r1] = False
            logits[r0:r1] = out.logits[:, -1].float().repeat_interleave(n, dim=0)
            if ws.seen is not None:
                for j, p in enumerate(chunk):
                    ids = p["input_ids"].to(self.device)
                    ws.seen[r0 + j * n : r0 + (j + 1) * n, ids] = True
            del out
        return logits

    # -- decode step --------------------------------------------------------------------------

    def _step(self, ws: _Workspace, mode: Mode) -> None:
        """One decode step for every row: feed `tokens`, sample the next ones (capturable: no host syncs)."""
        x = self.embed(ws.tokens)  # [B, H]
        ws.mask.index_fill_(3, ws.column, 0.0)
        cos, sin = self._rotary(ws.positions)
        for i, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, ws.keys[i], ws.values[i], ws.column, ws.mask)
        logits = self.lm_head(_rms_norm(x, self.norm.weight, self.eps)).float()
        ws.positions.add_(1)
        ws.column.add_(1)
        self._sample_and_record(ws, logits, mode)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # For text tokens the three mRoPE components are equal, so mRoPE is plain rotary here.
        freqs = positions[:, None].float() * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)
        sin = (emb.sin() * self.rope_scale).to(self.dtype)
        return cos[:, None, None, :], sin[:, None, None, :]

    def _layer(self, layer, x, cos, sin, k_cache, v_cache, column, mask) -> torch.Tensor:
        attn, mlp = layer.self_attn, layer.mlp
        q, k, v = self._qkv(x, cos, sin, layer.input_layernorm.weight, attn.q_proj.weight, attn.q_proj.bias,
                            attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight, attn.v_proj.bias,
                            self.n_kv, self.n_heads // self.n_kv, self.head_dim, self.eps)
        # The cache write and attention stay outside the compiled parts: in-place writes into the
        # big cache buffers are kept as they are, never turned into copies.
        k_cache.index_copy_(2, column, k)
        v_cache.index_copy_(2, column, v)
        with sdpa_kernel(_DECODE_ATTENTION):
            o = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=self.scaling)
        return self._out(x, o, attn.o_proj.weight, attn.o_proj.bias, layer.post_attention_layernorm.weight,
                         mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, self.eps)

    def _sample_and_record(self, ws: _Workspace, logits: torch.Tensor, mode: Mode) -> None:
        tok = sample_tokens(logits, mode, temperature=ws.temperature, top_k=ws.top_k, top_p=ws.top_p,
                            penalty=ws.penalty, seen=ws.seen, forbidden=self.forbidden)
        tok = tok.masked_fill(ws.finished, self.pad_id)
        ws.out_tokens.index_copy_(1, ws.step, tok[:, None])
        if mode.logprobs:
            lp = (logits / ws.logprob_temperature).log_softmax(dim=-1).gather(1, tok[:, None])
            ws.out_logprobs.index_copy_(1, ws.step, lp.masked_fill(ws.finished[:, None], 0.0))
        ws.finished |= (tok[:, None] == self.eos[None, :]).any(dim=-1)
        if mode.penalty:
            ws.seen.scatter_(1, tok[:, None], True)
        ws.tokens.copy_(tok)
        ws.step.add_(1)

    # -- CUDA graphs --------------------------------------------------------------------------

    def _graph(self, ws: _Workspace, mode: Mode):
        if mode in ws.graphs:
            return ws.graphs[mode]

        def safe_state():
            # The warm-up step really runs: point it at the last column and output slot so it
            # stays in bounds. Everything it writes is reset by the next prefill.
            ws.column.fill_(ws.columns - 1)
            ws.step.fill_(ws.max_tokens - 1)
            ws.finished.fill_(True)
            ws.mask[:, :, :, 0] = 0.0

        # The warm-up draws random numbers; put the generator back afterwards so that a seeded call
        # samples the same whether or not it had to capture first.
        rng = torch.cuda.get_rng_state(self.device)
        safe_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            # Warm-up: cuBLAS handles and workspaces are created (and torch.compile compiles) outside capture.
            try:
                self._step(ws, mode)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step is the same computation
                if self._qkv is _qkv:
                    raise
                log.warning("fast decode: torch.compile of the decode step failed (%s: %s); decoding eagerly",
                            type(e).__name__, e)
                self._qkv, self._out = _qkv, _out
                safe_state()
                self._step(ws, mode)
        torch.cuda.current_stream().wait_stream(side)
        safe_state()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=ws.pool):
            self._step(ws, mode)
        torch.cuda.synchronize()
        torch.cuda.set_rng_state(rng, self.device)
        ws.graphs[mode] = graph
        log.info("captured a decode graph: %d rows, %d cache columns, mode %s", ws.rows, ws.columns, mode)
        return graph


def _qkv(x, cos, sin, norm_w, wq, bq, wk, bk, wv, bv, n_kv: int, rep: int, head_dim: int, eps: float):
    """A layer's input norm, q/k/v projections and rotary for one token per row: q [B, n_kv, rep, hd], k, v [B, n_kv, 1, hd].

    Query heads h*rep..h*rep+rep-1 share KV head h (transformers' repeat_kv order), so the queries
    of one KV head become the rows of one attention "sequence": K/V are never repeated.
    """
    B = x.shape[0]
    h = _rms_norm(x, norm_w, eps)
    q = F.linear(h, wq, bq).view(B, n_kv, rep, head_dim)
    k = F.linear(h, wk, bk).view(B, n_kv, 1, head_dim)
    v = F.linear(h, wv, bv).view(B, n_kv, 1, head_dim)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q, k, v


def _out(x, o, wo, bo, norm_w, w_gate, w_up, w_down, eps: float):
    """The rest of a layer: output projection, residual, post-attention norm, SiLU MLP, residual."""
    x = x + F.linear(o.reshape(x.shape[0], -1), wo, bo)
    h = _rms_norm(x, norm_w, eps)
    return x + F.linear(F.silu(F.linear(h, w_gate)) * F.linear(h, w_up), w_down)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As Qwen2_5_VLRMSNorm: normalise in fp32, cast back, then scale.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _check_supported(text_cfg, rotary) -> None:
    """The decode step implements Qwen2.5-VL's text stack: full attention, SiLU MLP, static rotary."""
    problems = []
    if getattr(text_cfg, "use_sliding_window", False):
        problems.append("sliding-window attention")
    if getattr(text_cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={text_cfg.hidden_act!r}")
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in ("default", "mrope"):
        problems.append(f"rope_type={rope_type!r}")
    if problems:
        raise ValueError(f"the fast decode path does not support this model ({', '.join(problems)}); "
                         "set rollout.hf_fast_decode=off")


def rope_positions(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[3, b, L] mRoPE position ids of a left-padded prompt batch (0 on padding), by the model's own code."""
    mask = inputs["attention_mask"]
    if inputs.get("image_grid_thw") is None:
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return text[None].expand(3, -1, -1)
    get_rope_index = model.model.get_rope_index
    accepted = inspect.signature(get_rope_index).parameters
    # transformers < 5 has no mm_token_type_ids argument (it finds image tokens by id).
    kwargs = {k: inputs[k] for k in ("image_grid_thw", "attention_mask", "mm_token_type_ids") if k in accepted and k in inputs}
    positions, _ = get_rope_index(inputs["input_ids"], **kwargs)
    return positions


def cache_tensors(cache, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) [b, kv_heads, L, head_dim] of each layer of a transformers DynamicCache."""
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != n_layers:
        raise RuntimeError(
            f"fast decode: the prefill returned a cache without {n_layers} `layers` ({type(cache).__name__}); "
            "this transformers version is not supported by the fast path (rollout.hf_fast_decode=off)"
        )
    return [(layer.keys, layer.values) for layer in layers]
