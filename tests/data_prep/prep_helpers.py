"""Helpers for the data_prep tests: tiny images and schema rows made on the spot."""

from __future__ import annotations

import io

from PIL import Image

from ovlt_rl.data.schema import make_row


def png(color=(200, 30, 30), size=(16, 16)) -> bytes:
    """A tiny solid-colour PNG (different colours give different bytes and hashes)."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def row(question="How many red circles are there?", answer="3", response=None, color=(200, 30, 30),
        source="test/count", **extra):
    return make_row(data_source=source, question="<image>" + question, ground_truth=answer,
                    images=[png(color)], response=response, extra_info=extra)


def resp(think: str, answer: str, conclusion: str = "So that is it.") -> str:
    return f"<think>{think}</think>\n{conclusion}\n<answer>{answer}</answer>"
