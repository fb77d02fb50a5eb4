"""The hf backbone on tiny random models of each Qwen-VL family (built offline from configs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmemb import Embedder, InputError, Sample
from mmemb.testing.tiny_hf import FAMILIES, build_tiny_hf

from .conftest import DTYPES, assert_same_vectors, write_image


@pytest.fixture(scope="module", params=[(f, d) for f in FAMILIES for d in DTYPES], ids=lambda p: "-".join(p))
def tiny(request, tmp_path_factory):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    family, dtype = request.param
    path = build_tiny_hf(family, tmp_path_factory.mktemp(family))
    model = Embedder.from_pretrained(path, dtype=dtype)
    model.dtype_name = dtype
    return model


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return [write_image(d / f"{i}.png", size=(48 + 16 * i, 64), seed=i) for i in range(4)]


def items(media):
    return [
        Sample(id="t", text="a photo of a cat"),
        Sample(id="i", image=media[0], text="what is shown?", instruction="Represent the image"),
        Sample(id="v", frames=tuple(media)),
        Sample(id="d", pages=tuple(media[1:3]), text="a longer query about the document pages"),
    ]


def test_special_tokens_added_and_looked_up(tiny):
    tok = tiny.backbone.tokenizer
    for name, token in vars(tiny.config.tokens).items():
        assert tok(token, add_special_tokens=False)["input_ids"] == [tiny.ids[name]]
    assert len(set(tiny.ids.values())) == len(tiny.ids)
    assert tiny.backbone.input_embeddings().weight.shape[0] >= len(tok)
    if tiny.backbone.model.config.model_type == "qwen3_vl":  # Qwen3 has its own <think>: reused, not added
        assert tiny.ids["think_open"] < tiny.ids["disc_emb"]


def test_disc_and_gen_run_to_unit_vectors(tiny, media):
    for mode in ("disc", "gen"):
        out = tiny.encode(items(media), mode=mode, batch_size=4, max_new_tokens=4)
        assert out.vectors.shape == (4, 64)
        np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
        if mode == "gen":
            assert all(0 < n <= 4 for n in out.gen_tokens) and len(out.texts) == 4


@pytest.mark.parametrize("mode", ["disc", "gen"])
def test_padding_invariance(tiny, media, mode):
    batch = tiny.encode(items(media), mode=mode, batch_size=4, max_new_tokens=4).vectors
    for k, item in enumerate(items(media)):
        alone = tiny.encode([item], mode=mode, max_new_tokens=4)
        assert_same_vectors(alone.vectors, batch[k][None], tiny.dtype_name)


def test_disc_equals_plain_forward(tiny, media):
    """Our positions vs the model's own: a plain forward that computes M-RoPE positions itself."""
    bb = tiny.backbone
    item = items(media)[1]
    prompts = bb.prepare([item], [tiny.prompt(item)])
    with torch.no_grad():
        out = bb.model(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            output_hidden_states=True,
            **prompts.extra,
        )
    ref = torch.nn.functional.normalize(out.hidden_states[-1][0, -1].float(), dim=-1).numpy()
    assert_same_vectors(tiny.encode([item]).vectors, ref[None], tiny.dtype_name)


def test_gen_kv_reuse_equals_recompute(tiny, media):
    """Decoding from the prefill's cache (batched, left-padded) gives the same state at the last fed token
    as one forward over prompt + generated tokens, positions computed from scratch by the model."""
    bb = tiny.backbone
    batch = items(media)
    vecs, gen_ids, _ = tiny.generate(bb.prepare(batch, [tiny.prompt(s) for s in batch]), max_new_tokens=5)
    for k, item in enumerate(batch):
        prompts = bb.prepare([item], [tiny.prompt(item)])
        full = torch.cat([prompts.input_ids, torch.tensor([gen_ids[k]])], dim=1)
        mask = torch.ones_like(full)
        with torch.no_grad():
            positions, _ = bb.model.model.get_rope_index(
                full,
                mm_token_type_ids=(full == bb.image_pad_id).long(),
                image_grid_thw=prompts.extra.get("image_grid_thw"),
                attention_mask=mask,
            )
            hidden, _ = bb.forward_hidden(full, mask, positions, None, prompts.extra)
        if tiny.dtype_name == "float32":
            torch.testing.assert_close(vecs[k], hidden[0, -1], atol=1e-4, rtol=1e-4)
        assert_same_vectors(vecs[k][None].float(), hidden[0, -1][None].float(), tiny.dtype_name)


def test_save_load_round_trip(tiny, media, tmp_path):
    before = tiny.encode(items(media)).vectors
    gen_before = tiny.encode(items(media)[:2], mode="gen", max_new_tokens=4)
    tiny.save_pretrained(tmp_path / "m")
    loaded = Embedder.from_pretrained(tmp_path / "m", dtype=tiny.dtype_name)
    assert loaded.ids == tiny.ids and loaded.fingerprint() == tiny.fingerprint()
    np.testing.assert_array_equal(loaded.encode(items(media)).vectors, before)
    gen_after = loaded.encode(items(media)[:2], mode="gen", max_new_tokens=4)
    assert gen_after.texts == gen_before.texts
    np.testing.assert_array_equal(gen_after.vectors, gen_before.vectors)


def test_reserved_token_in_text_is_refused(tiny):
    with pytest.raises(InputError, match="reserved"):
        tiny.encode([Sample(id="x", text="look: <|image_pad|>")])


def test_unsupported_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(InputError, match="not supported"):
        Embedder.from_pretrained(tmp_path)
