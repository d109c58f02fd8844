"""Shared fixtures for tests/ovlt_rl: the tiny model, built once per session, and image rows."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image, ImageDraw

from ovlt_rl.data.schema import make_row, write_rows

TEST_SEED = 0


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # 2-core machines: several processes with 2 threads each run 3-4x slower than with one.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Qwen2.5-VL built into a fresh folder (about 2 s)."""
    from ovlt_rl.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=TEST_SEED)


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    from ovlt_rl.models.loading import load_processor

    return load_processor(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from ovlt_rl.models.loading import load_model

    return load_model(str(tiny_model_dir)).eval()


def _png_bytes(width: int = 112, height: int = 112, n_circles: int = 2, mode: str = "RGB") -> bytes:
    """A white image with `n_circles` red circles, as PNG bytes."""
    img = Image.new(mode, (width, height), "white" if mode == "RGB" else (255, 255, 255, 0))
    draw = ImageDraw.Draw(img)
    for k in range(n_circles):
        x = 8 + 30 * k
        draw.ellipse((x, 10, x + 20, 30), fill=(220, 20, 20) if mode == "RGB" else (220, 20, 20, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image_row(k: int = 2, *, response: str | None = None, question: str | None = None, **kw) -> dict:
    """A schema row: one 112x112 image with k circles, "How many red circles?", answer k."""
    return make_row(
        data_source="test/count",
        question=question if question is not None else "<image>How many red circles are there?",
        ground_truth=str(k),
        images=[_png_bytes(n_circles=k)],
        response=response,
        extra_info={"k": k},
        **kw,
    )


@pytest.fixture(scope="session")
def png_bytes():
    """png_bytes(width=112, height=112, n_circles=2, mode="RGB") -> PNG bytes."""
    return _png_bytes


@pytest.fixture(scope="session")
def image_row():
    """image_row(k=2, response=None, question=None, **make_row kwargs) -> a schema row."""
    return _image_row


@pytest.fixture
def write_parquet(tmp_path):
    """write_parquet(rows, name="x.parquet") -> path, in this test's tmp folder."""

    def _write(rows, name: str = "rows.parquet"):
        return write_rows(rows, tmp_path / name)

    return _write


def _undecodable(png: bytes) -> bytes:
    """`png` with its compressed pixel data scrambled and the chunk checksums made right again:
    it passes the start-up check (header, structure, CRCs) but fails to decode ("broken data stream")."""
    import struct
    import zlib

    out, pos = bytearray(png[:8]), 8
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        if kind == b"IDAT":
            body = bytes(b ^ 0x5A for b in body)
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + n
    return bytes(out)


@pytest.fixture(scope="session")
def undecodable_row():
    """undecodable_row(k=2, **image_row kwargs) -> a row whose image passes the check but not decoding."""

    def make(k: int = 2, **kw) -> dict:
        row = _image_row(k, **kw)
        row["images"] = [{"bytes": _undecodable(row["images"][0]["bytes"]), "path": None}]
        return row

    return make
