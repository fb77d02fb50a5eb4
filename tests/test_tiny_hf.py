"""The tiny offline Qwen-VL checkpoints used by the hf-backbone tests."""

from __future__ import annotations

import pytest

from mmemb.testing.tiny_hf import ADDED_TOKENS, FAMILIES, build_tiny_hf


@pytest.mark.parametrize("family", FAMILIES)
def test_build_reload_and_ids(family, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    path = build_tiny_hf(family, tmp_path / family)
    assert sum(p.stat().st_size for p in path.iterdir()) < 10 * 2**20
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == family
    assert type(AutoImageProcessor.from_pretrained(path)).__name__ == "Qwen2VLImageProcessorPil"
    for token, _special in ADDED_TOKENS[family]:
        assert len(tok.encode(token, add_special_tokens=False)) == 1
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.text_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg.text_config.vocab_size >= len(tok)
    assert tok.decode(tok.encode("The quick brown fox.")) == "The quick brown fox."


def test_build_is_deterministic(tmp_path):
    a, b = build_tiny_hf("qwen2_vl", tmp_path / "a"), build_tiny_hf("qwen2_vl", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = build_tiny_hf("qwen2_vl", tmp_path / "c", seed=1)
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()
