"""Loading models and processors: one function each, for the tiny model and the real ones alike.

How it works:
- `resolve_model_path(path)` returns `path` unchanged (a cached Hub id: its snapshot folder), except the special value "tiny", which is the
  tiny offline model in the cache folder (`$OVLT_CACHE`, default `~/.cache/ovlt`), built on first
  use. The folder name carries the builder version and a fingerprint of the tokenizer corpus, so a
  changed builder or corpus gets a fresh build instead of a stale one. A file lock keeps two
  processes from building it at once; the build itself writes to a temporary folder and renames it.
- The special value "tiny-pretrained" is the tiny model after pretraining on captions and on
  text-only reasoning, shipped in the package (ovlt_rl/models/tiny_pretrained/, 6 MB; its README
  says how it was made): the tiny analogue of a pretrained VLM that reads images and reasons in words.
- `load_processor(path)` uses the stock `AutoProcessor` where torchvision works (GPU machines), and
  `ImageOnlyQwen2_5_VLProcessor` where it does not; `min_pixels`/`max_pixels` set the image bounds.
- `load_model(path)` is `Qwen2_5_VLForConditionalGeneration.from_pretrained` with a clear error for
  folders that hold another architecture.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from ovlt_rl.models.processor import ImageOnlyQwen2_5_VLProcessor, torchvision_usable

from ovlt_rl.models.paths import BUILTIN_MODELS, TINY, TINY_PRETRAINED, TINY_REASONER, cached_hub_model  # noqa: F401 (re-exported)

TINY_PRETRAINED_DIR = Path(__file__).parent / "tiny_pretrained"


def default_cache_dir() -> Path:
    return Path(os.environ.get("OVLT_CACHE") or Path.home() / ".cache" / "ovlt").expanduser()


def tiny_model_dir(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Where the tiny model for `seed` lives in the cache (it may not be built yet)."""
    from ovlt_rl.models.tiny import TINY_BUILDER_VERSION  # noqa: PLC0415

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return cache / f"tiny-qwen2_5_vl-v{TINY_BUILDER_VERSION}-seed{seed}-{_corpus_fingerprint()[:12]}"


@functools.cache
def _corpus_fingerprint() -> str:
    # Reading the corpus takes ~0.1 s; once per process is enough.
    from ovlt_rl.models.tiny import corpus_fingerprint, default_corpus  # noqa: PLC0415

    return corpus_fingerprint(default_corpus())


def ensure_tiny_model(target: Path, seed: int = 0, log=None) -> Path:
    """Build the tiny model into `target` unless it is there; safe with concurrent callers."""
    from ovlt_rl.models.tiny import build_tiny_model  # noqa: PLC0415

    return _build_once(target, lambda: build_tiny_model(target, seed=seed, log=log))


def _build_once(target: Path, build) -> Path:
    """Run `build()` (which writes `target` through a temporary folder) unless `target` is built;
    safe with concurrent callers."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        # Another process may have built it while we waited for the lock.
        if not (target / "config.json").exists():
            # Temporary folders of builds that died: nobody else builds while we hold the lock.
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            build()
    return target


def tiny_reasoner_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the tiny text reasoner lives in the cache (built from the shipped tiny-pretrained on first use)."""
    from ovlt_rl.models.tiny_reasoner import TINY_REASONER_BUILDER_VERSION, build_tiny_reasoner  # noqa: PLC0415

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source = Path(_tiny_pretrained_dir())
    target = cache / f"tiny-reasoner-v{TINY_REASONER_BUILDER_VERSION}-{_source_fingerprint(source)[:12]}"
    return _build_once(target, lambda: build_tiny_reasoner(target, source))


@functools.cache
def _source_fingerprint(source: Path) -> str:
    # Hashing the shipped weights (6 MB) once per process: every resolve of "tiny-reasoner" names its folder.
    from ovlt_rl.models.tiny_reasoner import source_fingerprint  # noqa: PLC0415

    return source_fingerprint(source)


def _tiny_pretrained_dir() -> str:
    if not (TINY_PRETRAINED_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"the tiny-pretrained model is missing from {TINY_PRETRAINED_DIR}: reinstall ovlt")
    return str(TINY_PRETRAINED_DIR)


def resolve_model_path(path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """`path` itself; for "tiny" the cached tiny model's folder (built if missing); for
    "tiny-pretrained" the folder shipped in the package; for "tiny-reasoner" the cached text-only
    model made from it (built if missing)."""
    if path == TINY:
        return str(ensure_tiny_model(tiny_model_dir(cache_dir)))
    if path == TINY_PRETRAINED:
        return _tiny_pretrained_dir()
    if path == TINY_REASONER:
        return str(tiny_reasoner_dir(cache_dir))
    # A Hub id already in the local cache (ovlt_rl/models/paths.py): its snapshot folder, so that
    # every worker reads the same files and nothing asks the Hub.
    return cached_hub_model(path) or path


def load_processor(path: str, *, min_pixels: int | None = None, max_pixels: int | None = None):
    """The processor of a Qwen2.5-VL folder (or "tiny"), right for this machine.

    `min_pixels`/`max_pixels` override the image bounds saved in the folder (images are resized to
    fit them, keeping the aspect ratio, to multiples of patch_size * merge_size).
    """
    path = resolve_model_path(path)
    if torchvision_usable():
        processor = AutoProcessor.from_pretrained(path)
    else:
        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)
    if min_pixels is not None or max_pixels is not None:
        set_pixel_bounds(processor.image_processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return processor


def pixel_bounds(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the image processor resizes to."""
    size = image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def set_pixel_bounds(image_processor, *, min_pixels: int | None, max_pixels: int | None) -> None:
    lo, hi = pixel_bounds(image_processor)
    lo = lo if min_pixels is None else int(min_pixels)
    hi = hi if max_pixels is None else int(max_pixels)
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={lo}, max_pixels={hi}")
    image_processor.size = {"shortest_edge": lo, "longest_edge": hi}
    # transformers < 5 reads these attributes rather than `size`.
    for name, value in (("min_pixels", lo), ("max_pixels", hi)):
        if hasattr(image_processor, name):
            setattr(image_processor, name, value)


def load_model(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLForConditionalGeneration:
    """`Qwen2_5_VLForConditionalGeneration.from_pretrained` of a HF-format folder (or "tiny")."""
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "qwen2_5_vl":
        raise ValueError(f"{path} holds a {config.model_type!r} model; ovlt loads Qwen2.5-VL ('qwen2_5_vl') models")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, config=config, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.to(device)


def is_vision_language(path: str) -> bool:
    """Whether the model folder (or built-in name) holds a Qwen2.5-VL model (else a text-only one)."""
    return AutoConfig.from_pretrained(resolve_model_path(path)).model_type == "qwen2_5_vl"


def load_text_model(path: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    attn_implementation: str = "sdpa"):
    """A text-only causal LM (`AutoModelForCausalLM`), e.g. data preparation's reasoner or "tiny-reasoner"."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation).to(device)


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of a transformers model. transformers 5.2x renamed
    `gradient_checkpointing_enable` (the old name warns); the device image still has 5.17."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_decoder_layers(model) -> int:
    """torch.compile each text decoder layer of a Qwen2.5-VL (or text-only Qwen2) model in place;
    returns how many. In place (`nn.Module.compile`), so parameter names, FSDP units and state
    dicts stay as they are. Every layer has the same code and shapes, so dynamo compiles one graph
    for all of them (per shape class and grad mode). The attention call is a graph break (the
    packed kernel reads sample bounds on the host), so each layer runs as compiled parts around it."""
    backbone = model.model
    layers = backbone.language_model.layers if hasattr(backbone, "language_model") else backbone.layers
    for layer in layers:
        layer.compile()
    return len(layers)
