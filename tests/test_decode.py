"""The continuous-batching decoder (decode.py): rows of mixed lengths leave the batch as they end and new
rows join while inputs remain; every row's tokens and vector equal its decode alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmemb import Embedder, Sample
from mmemb.decode import Row, Start, decode
from mmemb.embedder import sample_tokens
from mmemb.testing.tiny_hf import build_tiny_hf

from .conftest import DTYPES, assert_same_vectors, write_image

CAPS = [1, 7, 2, 5, 3, 9, 1, 4, 6, 2, 8]


@pytest.fixture(scope="module", params=DTYPES)
def tiny(request, tmp_path_factory):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = Embedder.from_pretrained(
        build_tiny_hf("qwen2_vl", tmp_path_factory.mktemp("q")), dtype=request.param
    )
    model.dtype_name = request.param
    return model


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    img = write_image(d / "a.png", size=(64, 48))
    texts = [Sample(id=f"t{i}", text="word " * (1 + 3 * i)) for i in range(len(CAPS) - 1)]
    return texts + [Sample(id="i", image=img, text="what is shown?")]


def forced(tiny: Embedder, item: Sample, tokens: list[int]) -> torch.Tensor:
    """The state at the last of `tokens` from one forward over prompt + tokens (no cache), positions from
    the model's own get_rope_index: what a row's decode must give, whatever sat beside it. (D,)"""
    bb = tiny.backbone
    prompts = bb.prepare([item], [tiny.prompt(item)])
    full = torch.cat([prompts.input_ids, torch.tensor([tokens], dtype=torch.long)], dim=1)
    mask = torch.ones_like(full)
    with torch.no_grad():
        pos, _ = bb.model.model.get_rope_index(full, mm_token_type_ids=(full == bb.image_pad_id).long(),
                                               image_grid_thw=prompts.extra.get("image_grid_thw"),
                                               attention_mask=mask)  # fmt: skip
        hidden, _ = bb.forward_hidden(full, mask, pos, None, prompts.extra)
    return hidden[0, -1]


def same_row(tiny: Embedder, item: Sample, got_tokens, got_vec, alone_tokens, alone_vec) -> None:
    """float32: the tokens and the vector of the row's decode alone. bf16: batching changes the rounding, so
    greedy tokens of a random model (near-flat logits) may part ways; the vector must then still be the
    state of the row's own tokens (a cache that mixed rows up, or lost a column, would not be)."""
    got_vec, alone_vec = torch.as_tensor(got_vec).float()[None], torch.as_tensor(alone_vec).float()[None]
    if tiny.dtype_name == "float32" or got_tokens == alone_tokens:
        assert got_tokens == alone_tokens
        assert_same_vectors(got_vec, alone_vec, tiny.dtype_name)
    if got_tokens:
        ref = forced(tiny, item, got_tokens).float()[None]
        if tiny.config.normalize and got_vec.norm() < 1.001:
            ref = torch.nn.functional.normalize(ref, dim=-1)
        assert_same_vectors(got_vec, ref, tiny.dtype_name, atol=1e-4)


def run(tiny: Embedder, items, caps, batch_size: int, steps: list[int] | None = None) -> dict[int, Row]:
    """Decode items with per-row caps through `decode`, greedy, as `encode` does; record step batch sizes."""
    bb = tiny.backbone

    def prepare(idx):
        return bb.prepare([items[i] for i in idx], [tiny.prompt(items[i]) for i in idx])

    step = bb.step
    if steps is not None:
        bb.step = lambda tok, state, active: (steps.append(len(tok)), step(tok, state, active))[1]
    try:
        rows = [Row(i, c) for i, c in enumerate(caps)]
        start = lambda hidden, group: Start({}, list(range(len(group))))  # noqa: E731
        out = decode(bb, rows, prepare, start, lambda lg: sample_tokens(lg, 0.0, 1.0), tiny.ids,
                     tiny.stop_ids, batch_size)  # fmt: skip
        return {r.index: r for r in out}
    finally:
        bb.step = step


def test_rows_leave_and_join_and_each_equals_its_decode_alone(tiny, items):
    steps: list[int] = []
    together = run(tiny, items, CAPS, batch_size=3, steps=steps)
    assert max(steps) == 3 and len(steps) < sum(CAPS)  # rows shared steps, never more than 3 at once
    # a static batch of 3 runs until its longest row ends: continuous batching needs fewer steps
    static = sum(max(CAPS[i : i + 3]) for i in range(0, len(CAPS), 3))
    assert len(steps) < static
    for i, cap in enumerate(CAPS):
        alone = run(tiny, [items[i]], [cap], batch_size=1)[0]
        got = together[i]
        assert len(got.tokens) <= cap
        same_row(tiny, items[i], got.tokens, got.vector, alone.tokens, alone.vector)


def test_every_generating_mode_equals_each_row_alone(tiny, items):
    """encode's gen and think (batch 4 over 11 rows: rows join as others end) against one row at a time."""
    for mode in ("gen", "think"):
        out = tiny.encode(items, mode=mode, batch_size=4, max_new_tokens=6)
        tok = tiny.backbone.tokenizer
        for i, item in enumerate(items):
            alone = tiny.encode([item], mode=mode, max_new_tokens=6)
            ids = tok(out.texts[i], add_special_tokens=False)["input_ids"]
            alone_ids = tok(alone.texts[0], add_special_tokens=False)["input_ids"]
            if out.texts[i] == alone.texts[0] or tiny.dtype_name == "float32":
                assert out.texts[i] == alone.texts[0] and out.gen_tokens[i] == alone.gen_tokens[0]
                assert_same_vectors(out.vectors[i][None], alone.vectors, tiny.dtype_name)
            assert len(ids) >= 1 and len(alone_ids) >= 1
        assert all(s > 0 for s in out.seconds)


def test_generate_on_a_prepared_batch_is_the_same_decoder(tiny, items):
    bb = tiny.backbone
    prompts = bb.prepare(items[:4], [tiny.prompt(s) for s in items[:4]])
    vecs, ids, found = tiny.generate(prompts, max_new_tokens=5)
    out = tiny.encode(items[:4], mode="gen", batch_size=4, max_new_tokens=5)
    assert [len(i) for i in ids] == out.gen_tokens and found == out.gen_emb_found
    got = torch.nn.functional.normalize(vecs.float(), dim=-1).numpy()
    assert_same_vectors(got, out.vectors, tiny.dtype_name)
    assert np.isfinite(got).all()


def test_the_shared_prompt_prefix_is_cached_once_and_changes_no_vector(tiny, items):
    """Every prompt starts with the template's system turn: its KV cache is computed once and the batch is
    prefilled on top of it. Every mode gives the vectors of full prompts (and the cache follows the weights)."""
    bb = tiny.backbone
    prompts = tiny.prepare(items[:3], [tiny.prompt(s) for s in items[:3]])
    head = bb.tokenizer(tiny.prefix_text(), add_special_tokens=False)["input_ids"]
    assert prompts.prefix is not None and prompts.prefix.length == len(head) > 10
    full = bb.prepare(items[:3], [tiny.prompt(s) for s in items[:3]])
    assert full.input_ids.shape[1] == prompts.input_ids.shape[1] + len(head)
    T = prompts.input_ids.shape[1]
    for use_cache, kept in ((True, len(head) + T), (False, len(head))):  # disc keeps no keys of its own
        _, state = bb.prefill(prompts, use_cache=use_cache)
        assert state.cache.get_seq_length() == kept
    runs = {}
    for share in (True, False):
        tiny.share_prefix = share
        try:
            runs[share] = {
                m: tiny.encode(items, mode=m, batch_size=4, max_new_tokens=4)
                for m in ("disc", "nothink", "gen")
            }
        finally:
            tiny.share_prefix = True
    for m in ("disc", "nothink", "gen"):
        if m == "gen" and tiny.dtype_name != "float32":
            continue  # bf16: tokens may part ways between the two paths (test above checks the decoder)
        assert_same_vectors(runs[True][m].vectors, runs[False][m].vectors, tiny.dtype_name)
        assert runs[True][m].texts == runs[False][m].texts
    pre = tiny.shared_prefix()
    assert tiny.shared_prefix() is pre  # cached while the weights stay
    emb = bb.input_embeddings().weight
    with torch.no_grad():
        emb.add_(0.0)  # an in-place change of any weight rebuilds it
    assert tiny.shared_prefix() is not pre


def test_the_format_guard_keeps_every_reasoning_row_well_formed_and_changes_nothing_when_off(tiny, items):
    """generation.guard: a random model's think rows all end `<think>…</think><answer>…</answer><gen_emb>`
    within their cap, each still equal to its decode alone; off (the default), the outputs are unchanged."""
    import re

    before = tiny.encode(items, mode="think", batch_size=4, max_new_tokens=12)
    fp = tiny.fingerprint()
    tiny.config.generation.guard = True
    try:
        assert tiny.fingerprint() != fp  # guarded vectors are other vectors: caches must not mix them
        for cap in (6, 12, 40):  # 6: the least that fits `<think>`, the four tags and `<gen_emb>`
            out = tiny.encode(items, mode="think", batch_size=4, max_new_tokens=cap)
            shape = re.compile(r"^<think>(.*)</think><answer>(.*)</answer><gen_emb>$", re.DOTALL)
            assert all(shape.match(t) for t in out.texts), out.texts
            assert all(out.gen_emb_found) and max(out.gen_tokens) <= cap
            alone = tiny.encode([items[3]], mode="think", max_new_tokens=cap)
            if tiny.dtype_name == "float32":
                assert alone.texts[0] == out.texts[3]
                assert_same_vectors(out.vectors[3][None], alone.vectors, tiny.dtype_name)
    finally:
        tiny.config.generation.guard = False
    assert tiny.fingerprint() == fp
    after = tiny.encode(items, mode="think", batch_size=4, max_new_tokens=12)
    assert after.texts == before.texts
