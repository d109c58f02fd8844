"""A Qwen2.5-VL processor that works without torchvision.

How it works: the stock `Qwen2_5_VLProcessor` takes an image processor, a tokenizer and a *video*
processor, and the video processor needs torchvision (whose only build for our torch version is a
CUDA build that fails to import on CPU machines). `ImageOnlyQwen2_5_VLProcessor` is the stock class
with the video processor left out: same image-token expansion, chat template and tokenizer, and the
image processor transformers picks by itself when torchvision is missing (`Qwen2VLImageProcessorPil`,
PIL + numpy, numerically the same preprocessing).

Folders saved with it look like stock Qwen2.5-VL folders (`processor_class` is written as
"Qwen2_5_VLProcessor" and a `preprocessor_config.json` is written too), so that vLLM and stock
transformers on GPU machines load them unchanged. On machines without torchvision it is registered
with `AutoProcessor` for the Qwen2.5-VL config; `ovlt_rl.models.loading.load_processor` is the one
entry point that picks the stock class or this one.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

STOCK_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"


@functools.cache
def torchvision_usable() -> bool:
    """True when torchvision imports and its image ops load on this machine.

    A broad `except` on purpose: a torchvision built for another torch/CUDA fails with ImportError,
    OSError or RuntimeError depending on what is missing, and all of them mean "not usable".
    """
    try:
        import torchvision  # noqa: F401
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception:
        return False
    return True


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The same token attributes the stock __init__ sets, minus the video processor argument.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        # Without a video processor the base class would drop videos silently; refuse instead.
        if videos is not None:
            raise ValueError(
                "ImageOnlyQwen2_5_VLProcessor cannot process videos (no torchvision on this machine); "
                "pass images only"
            )
        return super().__call__(images=images, text=text, **kwargs)

    def to_dict(self):
        out = super().to_dict()
        out["processor_class"] = STOCK_PROCESSOR_CLASS
        return out

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save like the stock processor would, so stock tools read the folder as Qwen2.5-VL."""
        if push_to_hub:
            raise ValueError("ovlt saves processors locally only (push_to_hub is not supported)")
        files = super().save_pretrained(save_directory, **kwargs)
        self.tokenizer._set_processor_class(STOCK_PROCESSOR_CLASS)  # for later tokenizer-only saves
        save_directory = Path(save_directory)
        # The base class stamps our class name into tokenizer_config.json; stock loaders on GPU
        # machines (without ovlt imported) would not find it and fall back to a bare tokenizer.
        tok_cfg = save_directory / "tokenizer_config.json"
        if tok_cfg.exists():
            data = json.loads(tok_cfg.read_text(encoding="utf-8"))
            data["processor_class"] = STOCK_PROCESSOR_CLASS
            _write_json(tok_cfg, data)
        # transformers < 5 reads the image processor from preprocessor_config.json only.
        image_cfg = self.image_processor.to_dict()
        image_cfg["processor_class"] = STOCK_PROCESSOR_CLASS
        # Real Qwen2.5-VL folders also carry the bounds under these names; older readers use them.
        image_cfg["min_pixels"] = int(image_cfg["size"]["shortest_edge"])
        image_cfg["max_pixels"] = int(image_cfg["size"]["longest_edge"])
        _write_json(save_directory / "preprocessor_config.json", image_cfg)
        return [*files, str(save_directory / "preprocessor_config.json")]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def register_with_auto_processor() -> None:
    """Make `AutoProcessor` resolve Qwen2.5-VL configs to our class, where torchvision is unusable.

    Where torchvision works the stock mapping is left alone (registering would shadow it).
    """
    if not torchvision_usable():
        AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)


register_with_auto_processor()
