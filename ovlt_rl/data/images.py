"""Image loading for dataset rows: bytes or a path, to an RGB image sized for Qwen2.5-VL.

How it works: a row's image is `{"bytes": ..., "path": ...}` (HF datasets' Image feature). Bytes win;
without bytes, `path` is read (relative paths from the Parquet file's folder). Images with an alpha
channel are composited on white (plain RGB conversion would turn transparent diagram backgrounds
black), then `fit_image` resizes with transformers' own `smart_resize`: both sides a multiple of
patch_size * merge_size (28), the pixel count within [min_pixels, max_pixels], the aspect ratio kept.
The processor then sees an image it does not resize again, so the number of image tokens is known
from the image size alone: (h / 28) * (w / 28).

`check_image` is the cheap eager check (header + PIL `verify`, no pixel decode) that datasets run on
every row at construction; `load_image` decodes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

try:  # transformers >= 5 keeps it in the PIL image processor's module
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:  # transformers 4.x
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

__all__ = ["ImageError", "check_image", "fit_image", "fitted_size", "load_image", "smart_resize"]


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, corrupt or of impossible shape."""


def _open(image: dict[str, Any], base_dir: str | os.PathLike | None) -> Image.Image:
    data, path = image.get("bytes"), image.get("path")
    try:
        if data is not None:
            return Image.open(io.BytesIO(data))
        if path:
            p = Path(path)
            if not p.is_absolute() and base_dir is not None:
                p = Path(base_dir) / p
            if not p.is_file():
                raise ImageError(f"image file not found: {p}")
            return Image.open(p)
    except ImageError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError...
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from e
    raise ImageError("image has neither bytes nor path")


def check_image(image: dict[str, Any], base_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """Cheap validity check without decoding pixels; returns (width, height). Raises ImageError."""
    img = _open(image, base_dir)
    try:
        size = img.size
        img.verify()  # structure and checksums (PNG CRCs); does not decode the pixels
    except Exception as e:
        raise ImageError(f"corrupt image ({type(e).__name__}: {e})") from e
    if min(size) < 1:
        raise ImageError(f"image has size {size}")
    return size


def load_image(image: dict[str, Any], base_dir: str | os.PathLike | None = None) -> Image.Image:
    """Decode to RGB (alpha composited on white). Raises ImageError."""
    img = _open(image, base_dir)
    try:
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except Exception as e:
        raise ImageError(f"cannot decode image ({type(e).__name__}: {e})") from e


def fitted_size(width: int, height: int, *, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """(width, height) after `fit_image`. Raises ImageError for extreme aspect ratios (> 200)."""
    try:
        new_h, new_w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:
        raise ImageError(str(e)) from e
    return new_w, new_h


def fit_image(img: Image.Image, *, min_pixels: int, max_pixels: int, factor: int = 28) -> Image.Image:
    """Resize (bicubic, like the Qwen2-VL image processor) to `fitted_size`; unchanged if it fits."""
    size = fitted_size(img.width, img.height, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)
    if size == img.size:
        return img
    return img.resize(size, resample=Image.Resampling.BICUBIC)
