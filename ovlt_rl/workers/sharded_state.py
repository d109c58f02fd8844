"""The policy's sharded training state on disk, in formats whose loaders cannot run code.

Tensors (model parameters, optimizer moments and step counts) go through
torch.distributed.checkpoint with its safetensors storage (`HuggingFaceStorageWriter` with
`save_distributed=True`): every rank writes its own shards into one `shard-*.safetensors` file,
with each shard's offset in the file's JSON header, and `HuggingFaceStorageReader` rebuilds the
checkpoint's layout from those headers alone. Unlike DCP's default storage there is no pickled
`.metadata` and no `torch.load` of non-tensor items: that storage can't hold non-tensors, so the
optimizer's hyper-parameters (param_groups), the names of tied weights and the lr schedule's
position go into `worker_state.json`, written by rank 0.

safetensors stores each storage once, so a weight tied to another (Qwen's lm_head and token
embedding when tied) is saved under its first name only and reloaded through it.

safetensors serialises a whole file in memory before writing it, so each rank's state is split
into files of about FILE_BYTES (`shard-<rank>-model-<i>-of-<n>.safetensors`): a 7B run's 13 GB per
rank (8 ranks) would otherwise need 13 GB of extra host memory per rank while saving.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

WORKER_STATE = "worker_state.json"
FORMAT = "ovlt-sharded-safetensors-1"
FILE_BYTES = 1 << 30
"""About this many bytes of one rank's tensors per safetensors file."""


def tied_names(model: nn.Module) -> dict[str, str]:
    """{alias name: first name} of parameters that are the same tensor (the same on every rank)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


def _tensor_state(model_sd: dict[str, Any], optim_state: dict[str, Any], tied: dict[str, str]) -> dict[str, Any]:
    for fqn, entries in optim_state.items():
        for key, value in entries.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {fqn}.{key} is a {type(value).__name__}, not a tensor; "
                                "the safetensors checkpoint holds tensors only")
    return {"model": {k: v for k, v in model_sd.items() if k not in tied}, "optim": optim_state}


def _shards(t) -> int:
    """Ranks a DTensor's data is split over: the world with full sharding, one node's ranks with
    hybrid sharding (its other mesh dimension replicates). The same on every rank."""
    return math.prod(t.device_mesh.size(i) for i, p in enumerate(t.placements) if p.is_shard())


def _file_index(tensors: dict[str, Any], file_bytes: int) -> dict[str, int]:
    """File number (1..n) of every tensor, under the names DCP gives them (its flattened keys), in
    files of about `file_bytes` per rank. Computed from global shapes, so the same on every rank."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict  # DCP's own flattening
    from torch.distributed.tensor import DTensor

    flat, _ = flatten_state_dict(tensors)
    index: dict[str, int] = {}
    current, used = 1, 0
    for key in sorted(flat):
        t = flat[key]
        nbytes = t.numel() * t.element_size() // (_shards(t) if isinstance(t, DTensor) else 1)
        if used and used + nbytes > file_bytes:
            current, used = current + 1, 0
        index[key] = current
        used += nbytes
    return index


def save_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, world_size: int,
               extra: dict[str, Any], file_bytes: int = FILE_BYTES) -> None:
    """Write this rank's shards of the model and optimizer into `path` (a collective), and rank 0
    writes worker_state.json with `extra` (JSON values: the lr schedule's position)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    tied = tied_names(model)
    tensors = _tensor_state(model_sd, optim_sd["state"], tied)
    writer = HuggingFaceStorageWriter(path, save_distributed=True,
                                      fqn_to_index_mapping=_file_index(tensors, file_bytes))
    dcp.save(tensors, storage_writer=writer)
    if rank == 0:
        state = {"format": FORMAT, "world_size": world_size, "tied": tied,
                 "param_groups": optim_sd["param_groups"], **extra}
        tmp = Path(path) / f".{WORKER_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, Path(path) / WORKER_STATE)


def _worker_state(path: str) -> dict[str, Any]:
    file = Path(path) / WORKER_STATE
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: unreadable ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{file}: not an ovlt {FORMAT} worker state")
    return state


def read_worker_state(path: str, world_size: int) -> dict[str, Any]:
    """worker_state.json, checked: its format, and that it was written by as many ranks as now."""
    state = _worker_state(path)
    if state["world_size"] != world_size:
        raise ValueError(
            f"{path} was written by {state['world_size']} policy ranks and this run has {world_size} "
            f"(actor.num_workers): resume with actor.num_workers={state['world_size']}"
        )
    return state


def load_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, world_size: int) -> dict[str, Any]:
    """Load the model and optimizer written by `save_state` (a collective); returns worker_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_worker_state(path, world_size)
    tied = tied_names(model)
    if state["tied"] != tied:
        raise ValueError(f"{path}: tied weights {state['tied']} differ from this model's {tied}")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    tensors = _tensor_state(model_sd, optim_sd["state"], tied)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(path))  # in place, tied aliases included
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["param_groups"]]
    set_state_dict(model, optimizer, model_state_dict=model_sd,
                   optim_state_dict={"state": tensors["optim"], "param_groups": groups})
    return state


def read_full_model(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full (unsharded) model tensors of a checkpoint written by `save_state`, on CPU, under the
    HF model's names (tied aliases restored), and worker_state.json: for an export in one process.

    DCP's safetensors reader rebuilds each tensor's global shape from the shard offsets in the file
    headers and `dcp.load(no_dist=True)` copies every rank's slice into one full-size tensor: no
    process group, no optimizer state read, nothing but safetensors and JSON opened."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    state = _worker_state(path)
    reader = HuggingFaceStorageReader(path)
    metadata = reader.read_metadata()
    # Keys are DCP's flattening of save_state's {"model": root wrapper's state dict}: "model." +
    # "model." (the root wrapper) + the HF name.
    wanted: dict[str, torch.Tensor] = {}
    for key, md in metadata.state_dict_metadata.items():
        if not key.startswith("model."):
            continue  # "optim.*": not needed
        covered = sum(math.prod(c.sizes) for c in md.chunks)  # ranks' shards are disjoint
        if covered != math.prod(md.size):
            raise ValueError(f"{path}: {key} has {covered} of its {math.prod(md.size)} elements in the shard files "
                             f"(written by {state['world_size']} ranks): a rank's shard is missing")
        wanted[key.removeprefix("model.")] = torch.empty(md.size, dtype=md.properties.dtype)
    if not wanted:
        raise ValueError(f"{path}: no model tensors in the shard files")
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process": intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load({"model": wanted}, storage_reader=reader, no_dist=True)
    for alias, first in state["tied"].items():
        wanted[alias] = wanted[first]
    bad = [k for k in wanted if not k.startswith("model.")]
    if bad:
        raise ValueError(f"{path}: unexpected tensor names {bad[:3]} (expected the policy's root wrapper's `model.` prefix)")
    return {k.removeprefix("model."): v for k, v in wanted.items()}, state
