"""The tiny offline Qwen2.5-VL: real model classes, random weights, a locally trained tokenizer.

How it works: `build_tiny_model` makes a folder that loads exactly like a real Qwen2.5-VL checkpoint
(`Qwen2_5_VLForConditionalGeneration.from_pretrained`, the processor, vLLM on GPU machines), with
nothing downloaded:

1. a byte-level BPE tokenizer trained with `tokenizers` on the synthetic task's text (shipped as
   tiny_corpus.json.gz, the same for every seed: the seed picks the weights), with
   Qwen's pre-tokenizer (digits split one by one), Qwen2.5-VL's 14 special tokens placed after the
   learned vocabulary (as in the real tokenizer) and the real Qwen2.5-VL chat template;
2. a Qwen2.5-VL config shrunk to ~1.5 M parameters (text: hidden 128, 4 layers, 4 heads, 2 KV heads;
   vision: depth 3, hidden 96, patch 14, spatial merge 2), initialised from a seed with the model's
   own initialiser; the vocabulary is padded to a multiple of 64 like the real model's;
3. the processor (image processor + tokenizer + chat template), a generation config (eos
   <|im_end|> then <|endoftext|>, pad <|endoftext|>) and an `ovlt_tiny.json` provenance note.

The same seed and corpus give byte-identical weights and tokenizer files. The folder is written to
a temporary sibling and renamed into place, so a reader never sees half a model.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ovlt_rl.models.processor import ImageOnlyQwen2_5_VLProcessor

# Bump when the builder changes what it writes: the cache folder name includes it.
TINY_BUILDER_VERSION = 1

# Qwen2.5-VL's special tokens, in the real tokenizer's order (ids 151643..151656 there).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template shipped with Qwen/Qwen2.5-VL-*-Instruct (chat_template.json there).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Lines always added to the tokenizer corpus: the fixed text every prompt and response carries.
_ALWAYS_IN_CORPUS = [
    "You are a helpful assistant.",
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.",
    "<think> </think> <answer> </answer>",
    "Wait, let me double-check. Hmm, let me verify. So the answer is",
]


CORPUS_FILE = Path(__file__).parent / "tiny_corpus.json.gz"


def default_corpus() -> list[str]:
    """The tokenizer corpus shipped with the package: the synthetic task's text
    (`data_prep.synthetic.text_corpus(seed=0)`), saved as data so that the model layer does not
    import the data-preparation layer above it. `tests/ovlt_rl/models/test_models_tiny.py` fails
    when the task's text drifts from it; rewrite it with
    `python -c "from data_prep.synthetic import write_tiny_corpus; write_tiny_corpus()"`.
    """
    return json.loads(gzip.decompress(CORPUS_FILE.read_bytes()))


def corpus_fingerprint(corpus: list[str]) -> str:
    h = hashlib.sha256()
    for line in corpus:
        h.update(line.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def train_tokenizer(corpus: list[str], vocab_size: int = 1024) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen2's pipeline, trained on `corpus`, Qwen's special tokens appended."""
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*corpus, *_ALWAYS_IN_CORPUS], trainer=trainer)
    # Added after training so that they get the ids after the learned vocabulary, as in Qwen's.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        errors="replace",
        model_max_length=32768,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def tiny_config(
    tokenizer,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 384,
    mrope_section: tuple[int, int, int] = (4, 6, 6),
    max_position_embeddings: int = 4096,
    rope_theta: float = 1_000_000.0,
    vision_depth: int = 3,
    vision_hidden_size: int = 96,
    vision_intermediate_size: int = 256,
    vision_num_heads: int = 4,
    patch_size: int = 14,
    spatial_merge_size: int = 2,
    temporal_patch_size: int = 2,
    window_size: int = 112,
    tie_word_embeddings: bool = True,
    pad_vocab_to_multiple_of: int = 64,
) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config for the tiny model; token ids come from `tokenizer`."""
    head_dim = hidden_size // num_attention_heads
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"hidden_size {hidden_size} must divide by num_attention_heads {num_attention_heads}, "
            f"which must divide by num_key_value_heads {num_key_value_heads}"
        )
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim/2 = {head_dim // 2}")
    if vision_hidden_size % vision_num_heads:
        raise ValueError(f"vision_hidden_size {vision_hidden_size} must divide by vision_num_heads {vision_num_heads}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // pad_vocab_to_multiple_of) * pad_vocab_to_multiple_of
    text = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": list(mrope_section)},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_heads=vision_num_heads,
        patch_size=patch_size,
        spatial_merge_size=spatial_merge_size,
        temporal_patch_size=temporal_patch_size,
        out_hidden_size=hidden_size,
        window_size=window_size,
        # The real model has full attention every 8th block; here the last block.
        fullatt_block_indexes=[vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    corpus: list[str] | None = None,
    vocab_size: int = 1024,
    min_pixels: int = 56 * 56,
    max_pixels: int = 224 * 224,
    log: Callable[[str], None] | None = None,
    **config_overrides,
) -> Path:
    """Build the tiny model into `out_dir` (which must not exist or be empty); returns its path.

    `config_overrides` are the keyword arguments of `tiny_config` (hidden_size, vision_depth, ...).
    `min_pixels`/`max_pixels` are the saved processor's image bounds (224x224 = 64 image tokens max).
    """
    log = log or (lambda msg: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; remove it or build elsewhere")
    if corpus is None:
        corpus = default_corpus()
    if not corpus:
        raise ValueError("the tokenizer corpus is empty")

    log(f"training a byte-level BPE tokenizer on {len(corpus)} lines (target vocab {vocab_size})")
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    config = tiny_config(tokenizer, **config_overrides)
    log(f"tokenizer: {len(tokenizer)} tokens; model vocab {config.text_config.vocab_size}")

    # fork_rng: seed the initialiser without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: Qwen2.5-VL architecture, {n_params:,} parameters")

    vision = config.vision_config
    # The PIL image processor on every machine: it saves the same config as the torchvision one
    # ("Qwen2VLImageProcessor"), so the folder is identical wherever it is built.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
    )
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE
    )
    generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config = generation_config

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        note = {
            "builder": "ovlt_rl.models.tiny.build_tiny_model",
            "builder_version": TINY_BUILDER_VERSION,
            "seed": seed,
            "corpus_lines": len(corpus),
            "corpus_sha256": corpus_fingerprint(corpus),
            "parameters": n_params,
        }
        (tmp / "ovlt_tiny.json").write_text(json.dumps(note, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _ordinary_permissions(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace cannot replace a directory
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"saved to {out_dir}")
    return out_dir



def _ordinary_permissions(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and the weights writer leaves 0600: give the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)
