"""Tiny random-weight checkpoints of the three Qwen VL families, built offline for tests.

``build_tiny_hf(family, out_dir)`` writes a folder that loads offline with ``AutoTokenizer``,
``AutoImageProcessor`` and ``AutoModelForImageTextToText`` (what mmemb's hf backbone uses):

* model: the family's real config class with tiny sizes, random float32 weights from a fixed seed
  (initializer_range 0.2, so wrong positions or masks change the numbers visibly);
* tokenizer: a byte-level BPE trained in-process (``tokenizers``) on an embedded English corpus, with the
  family's real special tokens appended in the real order (ids are looked up, never hard-coded);
* image processor: the family's PIL image processor with small min/max pixels (64x64 -> 4 visual tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Sizes shared by the three families' language models.
TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_INTERMEDIATE = 128
HEAD_DIM = TEXT_HIDDEN // TEXT_HEADS  # 16 -> rotary half-dim 8
# Larger than the real 0.02 so that attention is far from uniform and position bugs show up in tests.
INITIALIZER_RANGE = 0.2

# Extra embedding rows past the tokenizer (real checkpoints also pad the vocab).
_SPARE_VOCAB_ROWS = 16
_BPE_VOCAB_SIZE = 640

# Qwen2's pre-tokenizer split (same as transformers' Qwen2Tokenizer, so a reload rebuilds the same pipeline).
_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Added tokens, in the order (and with the `special` flag) of the real checkpoints' tokenizers.
_QWEN2_VL_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
)
_QWEN2_5_VL_ADDED = _QWEN2_VL_ADDED + (
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
_QWEN3_VL_ADDED = _QWEN2_5_VL_ADDED + (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
ADDED_TOKENS = {"qwen2_vl": _QWEN2_VL_ADDED, "qwen2_5_vl": _QWEN2_5_VL_ADDED, "qwen3_vl": _QWEN3_VL_ADDED}

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"

# Both families' loop over a message's parts: images and videos become their placeholders, text is copied.
_CONTENT_PARTS = (
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
)

# Qwen2-VL / Qwen2.5-VL chat template (ChatML, default system prompt when none is given).
_QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}" + _CONTENT_PARTS + "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct style (no default system prompt; tool calling left out).
_QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}" + _CONTENT_PARTS + "{% endfor %}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATES = {
    "qwen2_vl": _QWEN2_VL_CHAT_TEMPLATE,
    "qwen2_5_vl": _QWEN2_VL_CHAT_TEMPLATE,
    "qwen3_vl": _QWEN3_VL_CHAT_TEMPLATE,
}

_CORPUS = """\
A picture is worth a thousand words, but a good caption is worth a thousand pictures.
The quick brown fox jumps over the lazy dog while the cat sleeps on the warm window sill.
Describe the image in one sentence. What color is the car in the picture?
The photo shows a red bicycle leaning against a stone wall next to a green door.
Two people are walking along the beach at sunset, and the sky is orange and pink.
A small dog is playing with a ball in the park. The grass is green and the trees are tall.
Find the document that answers the question. Retrieve the most relevant passage for the query.
Represent the given image for retrieving similar images. Represent this sentence for searching.
Question: how many apples are on the table? Answer: there are three apples on the wooden table.
The chart shows the number of visitors per month. Sales increased in March and fell in June.
A video of a man cooking pasta in a kitchen, stirring the sauce and adding fresh basil.
The cat is black and white, and it is sitting on a blue chair in front of the house.
Please think step by step before you answer. First look at the image, then read the text.
This is a photo of a mountain lake with snow on the peaks and a wooden boat near the shore.
The menu lists soup, salad, bread, fish, chicken, rice and a chocolate cake for dessert.
An airplane is flying over the city at night, and the lights of the streets are bright.
The children are reading books in the library. The teacher is writing on the board.
Is there a person in the image? Yes, there is a woman holding an umbrella in the rain.
The train leaves the station at nine in the morning and arrives in the evening.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42. Symbols: ( ) [ ] { } < > , . ; : ! ? - + = / * %
User: what is in this picture? Assistant: a bowl of fruit with bananas, grapes and oranges.
The embedding of a query should be close to the embedding of its relevant document.
Reasoning helps for hard questions, but simple questions are better answered directly.
"""


def _tokenizer_class(family: str) -> Any:
    # All three families ship Qwen2Tokenizer (tokenizer_class in their tokenizer_config.json).
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer


def build_tokenizer(family: str) -> Any:
    """Train a small byte-level BPE in-process and wrap it as the family's tokenizer class."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]

    added = ADDED_TOKENS[family]
    # The first added token is <|endoftext|>: the class's __init__ appends it right after the BPE vocab.
    tok = _tokenizer_class(family)(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
    )
    tok.add_tokens(
        [AddedToken(t, special=s, normalized=False, lstrip=False, rstrip=False) for t, s in added[1:]],
        special_tokens=False,
    )
    # The chat (Instruct) checkpoints stop on <|im_end|>; padding uses <|endoftext|>.
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATES[family]

    base = len(vocab)
    for offset, (token, _) in enumerate(added):
        got = tok.convert_tokens_to_ids(token)
        if got != base + offset:
            raise RuntimeError(f"{family}: {token} got id {got}, expected {base + offset}")
    return tok


def token_ids(tokenizer: Any) -> dict[str, int]:
    """The config-relevant ids, looked up in the tokenizer."""
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
        "endoftext_id": "<|endoftext|>",
        "im_start_id": "<|im_start|>",
        "im_end_id": "<|im_end|>",
    }
    out = {k: tokenizer.convert_tokens_to_ids(v) for k, v in ids.items()}
    unk = tokenizer.unk_token_id
    for k, v in out.items():
        if v is None or (unk is not None and v == unk):
            raise RuntimeError(f"token for {k} is missing from the tokenizer")
    return out


def _rope(family: str) -> dict[str, Any]:
    half = HEAD_DIM // 2  # 8 rotary frequencies
    if family == "qwen3_vl":
        # Interleaved MRoPE: T takes the slots not used by H/W (real 24/20/20 of 64 -> 4/2/2 of 8).
        section = [4, 2, 2]
        rope = {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": section,
            "mrope_interleaved": True,
        }
    else:
        # Chunked MRoPE (real 16/24/24 of 64 -> 2/3/3 of 8).
        section = [2, 3, 3]
        rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section}
    if sum(section) != half:
        raise AssertionError("mrope_section must sum to head_dim // 2")
    return rope


def build_config(family: str, tokenizer: Any, width: int = TEXT_HIDDEN, layers: int = TEXT_LAYERS) -> Any:
    """The family's real config class with tiny sizes and the tokenizer's ids. `width` and `layers` scale the
    language model (head size kept at HEAD_DIM) for benchmarks that need a bigger random model."""
    import transformers

    ids = token_ids(tokenizer)
    vocab_size = len(tokenizer) + _SPARE_VOCAB_ROWS
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": width * TEXT_INTERMEDIATE // TEXT_HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": width // HEAD_DIM,
        "num_key_value_heads": width // HEAD_DIM * TEXT_KV_HEADS // TEXT_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "initializer_range": INITIALIZER_RANGE,
        "rms_norm_eps": 1e-6,
        "rope_parameters": _rope(family),
        "bos_token_id": ids["endoftext_id"],
        "eos_token_id": ids["im_end_id"],
        "pad_token_id": ids["endoftext_id"],
        "tie_word_embeddings": False,
        "dtype": "float32",
    }
    common = {
        "image_token_id": ids["image_token_id"],
        "video_token_id": ids["video_token_id"],
        "vision_start_token_id": ids["vision_start_token_id"],
        "vision_end_token_id": ids["vision_end_token_id"],
        "tie_word_embeddings": False,
    }
    # every family's vision tower: 2 blocks, 2 heads, 2x2 patches merged into one token, frame pairs
    vision = {"depth": 2, "num_heads": 2, "in_channels": 3, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "initializer_range": INITIALIZER_RANGE}  # fmt: skip
    if family == "qwen2_vl":
        text["use_sliding_window"] = False
        vision |= {
            "embed_dim": 32,
            "hidden_size": width,  # merger output = LLM width
            "hidden_act": "quick_gelu",
            "mlp_ratio": 2,
            "patch_size": 14,
        }
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    elif family == "qwen2_5_vl":
        text["use_sliding_window"] = False
        vision |= {
            "hidden_size": 32,
            "hidden_act": "silu",
            "intermediate_size": 64,
            "patch_size": 14,
            "tokens_per_second": 2,
            "window_size": 112,
            "out_hidden_size": width,
            "fullatt_block_indexes": [1],
        }
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    elif family == "qwen3_vl":
        text["head_dim"] = HEAD_DIM
        text["attention_bias"] = False
        vision |= {
            "hidden_size": 32,
            "hidden_act": "gelu_pytorch_tanh",
            "intermediate_size": 64,
            "patch_size": 16,
            "out_hidden_size": width,
            "num_position_embeddings": 64,  # 8x8 grid, interpolated to the image grid
            "deepstack_visual_indexes": [0, 1],
        }
        config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return config


def build_image_processor(family: str) -> Any:
    """PIL image processor with small pixel bounds: a 64x64 image gives 2x2 = 4 visual tokens."""
    from transformers import Qwen2VLImageProcessorPil

    if family == "qwen3_vl":
        patch, mean, std = 16, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    else:
        patch, mean, std = 14, [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    factor = patch * 2  # patch_size * merge_size: one merged visual token
    return Qwen2VLImageProcessorPil(
        min_pixels=factor * factor,
        max_pixels=factor * factor * 16,
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=mean,
        image_std=std,
    )


def build_model(family: str, config: Any, seed: int = 0) -> Any:
    import torch
    import transformers

    classes = {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
    }
    rng_state = torch.random.get_rng_state()  # do not disturb the caller's global RNG
    try:
        torch.manual_seed(seed)
        model = classes[family](config)
    finally:
        torch.random.set_rng_state(rng_state)
    model = model.to(torch.float32).eval()
    gen = model.generation_config
    gen.bos_token_id = config.text_config.bos_token_id
    gen.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    gen.pad_token_id = config.text_config.pad_token_id
    return model


# UME-R1's two tokens, added as its SFT script adds them: plain (non-special) tokens, <gen_emb> first
# (XMUDeepLIT/UME-R1 src/sft-train/qwenvl/train/train_qwen.py L191, L200; ids 151657, 151658 in the real one).
UME_TOKENS = ("<gen_emb>", "<disc_emb>")


def build_tiny_hf(
    family: str,
    out_dir: Path,
    seed: int = 0,
    width: int = TEXT_HIDDEN,
    layers: int = TEXT_LAYERS,
    ume: bool = False,
) -> Path:
    """Write a tiny random checkpoint of ``family`` (one of :data:`FAMILIES`) into ``out_dir``; return it.
    `width` and `layers`: a bigger language model (see `build_config`). `ume`: shaped as a UME-R1 checkpoint
    (its two tokens in the tokenizer, rows for them within the model's vocab)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    if ume:
        for token in UME_TOKENS:
            tokenizer.add_tokens([token])
    config = build_config(family, tokenizer, width, layers)
    model = build_model(family, config, seed=seed)
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    build_image_processor(family).save_pretrained(out_dir)
    return out_dir


__all__ = [
    "ADDED_TOKENS",
    "CHAT_TEMPLATES",
    "FAMILIES",
    "IMAGE_PLACEHOLDER",
    "UME_TOKENS",
    "VIDEO_PLACEHOLDER",
    "build_config",
    "build_image_processor",
    "build_model",
    "build_tiny_hf",
    "build_tokenizer",
    "token_ids",
]
