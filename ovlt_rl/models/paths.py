"""Which model names a run accepts, checked before any worker starts (imports nothing heavy).

A model setting (model.path, eval's model=, the captioner, reasoner, sampler and difficulty
models of data preparation) names one of:
- a local Hugging Face folder, i.e. one with config.json;
- "tiny" (the offline tiny model, built into the cache on first use), "tiny-pretrained" (shipped) or
  "tiny-reasoner" (tiny-pretrained's decoder as a text-only model, built into the cache on first use);
- a Hugging Face Hub id (`org/name`) whose files are already in the local Hugging Face cache.

Runs never download a model: the machines this is built on are offline, and on a cluster every
worker would fetch its own copy at start-up. An id that is not cached is an error that says to
download it first. The reference model is a frozen copy of model.path (there is no separate setting).
"""

from __future__ import annotations

from pathlib import Path

from ovlt_rl.config import ConfigError

TINY = "tiny"
TINY_PRETRAINED = "tiny-pretrained"
TINY_REASONER = "tiny-reasoner"
"""tiny-pretrained's decoder as a text-only Qwen2 model (ovlt_rl/models/tiny_reasoner.py), built on first use."""
BUILTIN_MODELS = (TINY, TINY_PRETRAINED, TINY_REASONER)


def cached_hub_model(value: str) -> str | None:
    """The local snapshot folder of Hub id `value` if its config.json is in the local HF cache, else None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if Path(value).expanduser().exists():
        return None  # a local path always wins over a Hub id of the same spelling
    try:
        found = try_to_load_from_cache(value, "config.json")
    except HFValidationError:  # not of the form of a Hub id (e.g. a path with several folders)
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def check_model_path(value: str, field: str) -> None:
    """Raise ConfigError, one line naming `field`, unless `value` is a model this machine has."""
    if value in BUILTIN_MODELS:
        return
    if not value:
        raise ConfigError(f"{field}: no model given (a folder with config.json, tiny, tiny-pretrained, tiny-reasoner or a cached Hub id)")
    p = Path(value).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return
        raise ConfigError(f"{field}={value!r}: the folder has no config.json, so it is not a Hugging Face model folder")
    if p.exists():
        raise ConfigError(f"{field}={value!r}: is a file; expected a Hugging Face model folder (with config.json)")
    if cached_hub_model(value):
        return
    from huggingface_hub.constants import HF_HUB_CACHE

    if _looks_like_hub_id(value):
        raise ConfigError(
            f"{field}={value!r}: no such local folder, and no Hugging Face Hub model of that id in the local cache "
            f"({HF_HUB_CACHE}); runs do not download models: download it first (`hf download {value}`) or give a "
            f"folder with config.json"
        )
    raise ConfigError(
        f"{field}={value!r}: no such folder ({p.resolve()}); give a Hugging Face model folder (with config.json), "
        f"tiny, tiny-pretrained, tiny-reasoner, or a Hub id already in the local cache (runs do not download models)"
    )


def _looks_like_hub_id(value: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if value.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True
