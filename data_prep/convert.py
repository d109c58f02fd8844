"""`ovlt prepare convert`: write a verl, EasyR1 or ShareGPT-style dataset as ovlt's Parquet.

Training reads those layouts as they are (data.format, ovlt_rl/data/formats.py); converting is for
users who want one self-contained file: rows go through the same reader, and images given as paths
are read into the file as bytes, so it no longer depends on where the images lie. An image file
that can't be read stops the conversion with its row and path named (a converted file is never
missing images silently). SFT layouts (rows with a response) make an SFT file, others an RL file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ovlt_rl.data import schema
from ovlt_rl.data.formats import DataFormat, FormatError, read_source


def convert(src: str | os.PathLike, out: str | os.PathLike, fmt: DataFormat) -> tuple[Path, int]:
    """Convert `src` (any source `read_source` takes) to ovlt's Parquet at `out`; returns (path, rows)."""
    rows = read_source(src, fmt)
    for i, row in enumerate(rows):
        for image in row["images"]:
            if image["bytes"] is None and image["path"]:
                try:
                    image["bytes"] = Path(image["path"]).read_bytes()
                except OSError as e:
                    raise FormatError(f"{src} row {i}: image {image['path']} can't be read ({e.strerror})") from None
                image["path"] = None
        if row.get("reward_model") is None:
            row["reward_model"] = {"style": "rule", "ground_truth": None}
    return schema.write_rows(rows, out), len(rows)
