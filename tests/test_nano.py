"""The nano backbone: real weights from installed packages, disc/gen, padding invariance, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmemb import Embedder, Sample
from mmemb.backbones.nano import IMAGE_TOKEN
from mmemb.types import MODES

from .conftest import assert_same_vectors


def test_nano_embeds_image_and_text_to_unit_vectors(nano, images):
    out = nano.encode([Sample(id="t", text="a photo of a cat"), Sample(id="i", image=images[0])])
    assert out.vectors.shape == (2, 576) and out.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out.vectors[0], out.vectors[1])


def test_special_token_ids_are_looked_up(nano):
    tok = nano.backbone.tokenizer
    for name, token in vars(nano.config.tokens).items():
        assert tok.convert_tokens_to_ids(token) == nano.ids[name]
        assert tok(token, add_special_tokens=False)["input_ids"] == [nano.ids[name]]  # one unsplit token
    assert len(set(nano.ids.values())) == len(nano.ids)
    assert nano.backbone.token_id(IMAGE_TOKEN) not in nano.ids.values()


def test_image_changes_the_vector_and_frames_pages_work(nano, images):
    items = [
        Sample(id="a", image=images[0]),
        Sample(id="b", image=images[1]),
        Sample(id="v", frames=tuple(images)),
        Sample(id="d", pages=tuple(images[:2]), text="page"),
    ]
    v = nano.encode(items).vectors
    assert v.shape == (4, 576)
    assert float(v[0] @ v[1]) < 0.99999


def test_padding_invariance_disc(nano_dt, images):
    nano = nano_dt
    items = [
        Sample(id="s", text="short"),
        Sample(id="l", text="a much longer input text " * 12, instruction="Represent this"),
        Sample(id="i", image=images[2], text="with an image"),
    ]
    batched = nano.encode(items, batch_size=3).vectors
    for k, item in enumerate(items):
        alone = nano.encode([item], batch_size=1).vectors[0]
        assert_same_vectors(alone[None], batched[k][None], nano.dtype_name, atol=2e-5)


def test_disc_equals_plain_forward(nano_dt):
    """disc is the last-layer state at <disc_emb> of one plain forward of the causal LM."""
    nano = nano_dt
    item = Sample(id="x", text="the quick brown fox")
    bb = nano.backbone
    ids = bb.tokenizer(nano.prompt(item), add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0, -1] == nano.ids["disc_emb"]
    with torch.no_grad():
        out = bb.lm(input_ids=ids, output_hidden_states=True)
    ref = torch.nn.functional.normalize(out.hidden_states[-1][0, -1].float(), dim=-1).numpy()
    assert_same_vectors(nano.encode([item]).vectors, ref[None], nano.dtype_name)


def test_gen_kv_reuse_equals_recompute(nano_dt, images):
    """Decoding from the prefill's cache gives the same state as one forward over prompt + generated."""
    nano = nano_dt
    items = [Sample(id="a", text="a red bicycle"), Sample(id="b", image=images[1], text="what is this?")]
    bb = nano.backbone
    # the prompts as encode prepares them (shared-prefix cache on): in bf16 another computation path rounds
    # differently, and greedy tokens may part ways
    vecs, gen_ids, found = nano.generate(
        nano.prepare(items, [nano.prompt(s) for s in items]), max_new_tokens=6
    )
    out = nano.encode(items, mode="gen", batch_size=2, max_new_tokens=6)
    for k, item in enumerate(items):
        assert out.gen_tokens[k] == len(gen_ids[k]) > 0
        assert out.texts[k] == bb.tokenizer.decode(gen_ids[k], skip_special_tokens=False)
        prompts = bb.prepare([item], [nano.prompt(item)])
        full = torch.cat([prompts.input_ids, torch.tensor([gen_ids[k]])], dim=1)
        mask = torch.ones_like(full)
        with torch.no_grad():
            hidden, _ = bb.forward_hidden(full, mask, bb.text_positions(mask), None, prompts.extra)
        if nano.dtype_name == "float32":
            torch.testing.assert_close(vecs[k], hidden[0, -1], atol=1e-4, rtol=1e-4)
        assert_same_vectors(vecs[k][None].float(), hidden[0, -1][None].float(), nano.dtype_name, atol=1e-3)
        assert found[k] is False and out.gen_emb_found[k] is False  # untrained nano: the fallback is flagged


def test_save_load_round_trip_is_identical(nano, images, tmp_path):
    bb = nano.backbone
    lora_b = next(p for n, p in bb.lm.named_parameters() if "lora_B" in n)
    saved = [t.detach().clone() for t in (bb.projector[0].bias, lora_b, bb.added_rows)]
    with torch.no_grad():  # perturb what is ours, so the test sees the saved weights, not a re-init
        bb.projector[0].bias.add_(0.01)
        lora_b.add_(0.001)
        bb.added_rows.add_(0.01)  # <disc_emb> among them: the disc vector depends on its row
    try:
        items = [Sample(id="t", text="a cat"), Sample(id="i", image=images[0], text="image")]
        before = nano.encode(items).vectors
        nano.save_pretrained(tmp_path / "m")
        assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
            "embedder_config.json",
            "nano.safetensors",
            "policy.safetensors",
        ]
        loaded = Embedder.from_pretrained(tmp_path / "m")
        assert loaded.fingerprint() == nano.fingerprint()
        np.testing.assert_array_equal(loaded.encode(items).vectors, before)
    finally:
        with torch.no_grad():  # restore exactly: the session's nano is shared by other tests
            bb.projector[0].bias.copy_(saved[0])
            lora_b.copy_(saved[1])
            bb.added_rows.copy_(saved[2])


def test_added_token_rows_are_trainable_in_and_out(nano):
    """The rows of added tokens are nano's own parameter: stage 1 trains them (peft would freeze rows kept in
    the tied embedding matrix), and they are both the input embedding and the LM-head row of their token."""
    bb = nano.backbone
    close = nano.ids["think_close"]
    assert not bb.added_rows.requires_grad
    item = Sample(id="t", text="a cat")
    ids = bb.tokenizer(nano.prompt(item) + "<think>a cat</think>", add_special_tokens=False,
                       return_tensors="pt")["input_ids"]  # fmt: skip
    with torch.no_grad():
        hidden, _ = bb.forward_hidden(ids, torch.ones_like(ids), bb.text_positions(torch.ones_like(ids)))
        logits = bb.logits(hidden[0])  # (T, V)
    row = bb.added_rows[close - bb.base_vocab]
    tol = 1e-4 if hidden.dtype == torch.float32 else 3e-2  # bf16: the same product, rounded
    torch.testing.assert_close(logits[:, close], (hidden[0] @ row).float(), rtol=tol, atol=tol)
    try:
        bb.configure_trainable()
        lm_mask = torch.zeros(1, ids.shape[1] - 1, dtype=torch.bool)
        lm_mask[0, -1] = True  # predict </think>
        _, out = bb(ids, torch.ones_like(ids), bb.text_positions(torch.ones_like(ids)), None, lm_mask)
        torch.nn.functional.cross_entropy(out, ids[:, -1]).backward()
        grad = bb.added_rows.grad  # (n_added, D)
        assert grad[close - bb.base_vocab].abs().sum() > 0  # as an output row
        assert grad[nano.ids["think_open"] - bb.base_vocab].abs().sum() > 0  # as an input embedding
    finally:
        bb.added_rows.requires_grad_(False)
        bb.added_rows.grad = None
        for p in bb.parameters():
            p.grad = None


def test_chunked_vision_equals_one_batch(nano_dt):
    """The chunked, channels_last vision path gives the features of one plain batched forward."""
    from mmemb.backbones.efficientnet import load_efficientnet_lite0

    x = torch.randn(9, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    bb = nano_dt.backbone
    dtype = bb.added_rows.dtype
    plain = load_efficientnet_lite0().to(dtype)  # contiguous layout, one call
    with torch.no_grad():
        ref = bb.projector(
            bb.pool(plain.forward_features(x.to(dtype))).flatten(2).transpose(1, 2)
        )  # (9, 4, D)
        got = bb.encode_images(x)
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert_same_vectors(got.float().flatten(1), ref.float().flatten(1), nano_dt.dtype_name)


def test_fingerprint_is_the_same_in_a_new_process(nano):
    """The evaluation cache is keyed by the fingerprint: a fresh process must rebuild the same weights."""
    import subprocess
    import sys

    code = "from mmemb import Embedder; print(Embedder.from_pretrained('nano').fingerprint())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == nano.fingerprint()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_returns_every_per_row_field_complete(nano, mode):
    from mmemb.types import REASONING_MODES, Embeddings

    out = nano.encode(["a red square", "a blue circle", "x"], mode=mode, max_new_tokens=4)
    for name in Embeddings.ROW_FIELDS:
        assert len(getattr(out, name)) == 3, name
    if mode == "adaptive":
        assert all(a in nano.config.policy.action_names() for a in out.actions)
    else:
        assert out.actions == [None] * 3
    if mode == "disc":
        assert (out.texts, out.gen_tokens, out.reasoned) == ([""] * 3, [0] * 3, [False] * 3)
    if mode in REASONING_MODES:
        assert all(
            t.endswith(nano.config.tokens.gen_emb) or not f
            for t, f in zip(out.texts, out.gen_emb_found, strict=True)
        )
    with pytest.raises(ValueError, match="give reasoned, one entry per row"):
        Embeddings(out.vectors, "gen", texts=out.texts, gen_tokens=out.gen_tokens,
                   gen_emb_found=out.gen_emb_found, seconds=out.seconds)  # fmt: skip
    with pytest.raises(ValueError, match="seconds has 2 entries for 3 rows"):
        Embeddings(out.vectors, "disc", seconds=[0.0, 0.0])


def test_uint8_pixels_normalised_per_chunk_equal_the_float_batch(nano_dt, images):
    """prepare keeps a batch's images as uint8 (a quarter of the memory); the encoder normalises each chunk:
    the same visual tokens, bit for bit, as the float32 batch normalised up front."""
    from PIL import Image

    from mmemb.backbones.efficientnet import image_pixels, preprocess_images

    bb = nano_dt.backbone
    pics = [Image.open(p) for p in images] * 3  # 12 images: several chunks
    pixels = image_pixels(pics)
    assert pixels.dtype == torch.uint8 and pixels.shape == (12, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            bb.encode_images(pixels), bb.encode_images(preprocess_images(pics)), rtol=0, atol=0
        )
    prompts = bb.prepare([Sample(pages=tuple(images))], [nano_dt.prompt(Sample(pages=tuple(images)))])
    assert prompts.extra["pixel_values"].dtype == torch.uint8


def test_the_batch_memory_budget_splits_forwards_and_changes_no_vector(nano_dt, images):
    """A forward takes rows until their padded text tokens would pass `max_batch_tokens` or their images
    `max_batch_images` (a row over a budget runs alone): memory per forward is bounded whatever the batch
    size, in the one-forward modes and in the decoder's prefills, and the vectors are those of one batch."""
    nano = nano_dt
    items = [Sample(id=f"d{i}", pages=tuple(images[: 1 + i % 4]), text="page " * i) for i in range(8)]
    items.append(Sample(id="long", text="a long text " * 100))
    forwards = []  # (rows, images, has the long item) per prefill
    real, budget = nano.backbone.prefill, (nano.max_batch_tokens, nano.max_batch_images)

    def spy(prompts, use_cache=True):
        pixels = prompts.extra.get("pixel_values")
        forwards.append(
            (prompts.input_ids.shape[0], 0 if pixels is None else len(pixels), prompts.input_ids.shape[1])
        )
        return real(prompts, use_cache)

    for mode in ("disc", "nothink", "gen"):
        whole = nano.encode(items, mode=mode, batch_size=9, max_new_tokens=3)
        nano.backbone.prefill, nano.max_batch_tokens, nano.max_batch_images = spy, 400, 4
        forwards.clear()
        try:
            split = nano.encode(items, mode=mode, batch_size=9, max_new_tokens=3)
        finally:
            del nano.backbone.prefill
            nano.max_batch_tokens, nano.max_batch_images = budget
        assert len(forwards) > 3 and any(rows > 1 for rows, _, _ in forwards)
        assert all(rows == 1 or n_images <= 4 for rows, n_images, _ in forwards), forwards
        longest = max(width for _, _, width in forwards)  # the long text's forward: too long to share
        assert [rows for rows, _, width in forwards if width == longest] == [1]
        if mode != "gen" or nano.dtype_name == "float32":
            assert split.texts == whole.texts
            assert_same_vectors(split.vectors, whole.vectors, nano.dtype_name, atol=2e-5)
