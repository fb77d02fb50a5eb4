"""The think, nothink and adaptive modes on a tiny random Qwen2-VL: each adaptive row equals the fixed-mode
output of the action the policy took; the decision is read from the prefill and costs nothing extra."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmemb import Embedder, InputError, Sample
from mmemb.testing.tiny_hf import build_tiny_hf

from .conftest import DTYPES, assert_same_vectors, write_image


@pytest.fixture(scope="module", params=DTYPES)
def tiny(request, tmp_path_factory):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    path = build_tiny_hf("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))
    model = Embedder.from_pretrained(path, dtype=request.param)
    model.dtype_name = request.param
    return model


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    imgs = [write_image(d / f"{i}.png", size=(48 + 16 * i, 64), seed=i) for i in range(3)]
    texts = [Sample(id=f"t{i}", text=f"query number {i} about {w}") for i, w in enumerate("abcdefgh")]
    return texts + [
        Sample(id="i", image=imgs[0], text="what is shown?", instruction="Represent the image"),
        Sample(id="v", frames=tuple(imgs)),
    ]


def mixed_policy(embedder: Embedder, items, seed: int = 0) -> np.ndarray:
    """Give the head random weights until it sends some items to each action; returns the actions."""
    disc = torch.from_numpy(embedder.encode(items).vectors)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(50):
        with torch.no_grad():
            w = embedder.policy.linear.weight
            w.copy_(torch.randn(w.shape, generator=gen) * 5)
            embedder.policy.linear.bias.zero_()
            actions = embedder.policy(disc).argmax(-1).numpy()
        if len(set(actions.tolist())) == w.shape[0]:
            return actions
    raise AssertionError("no random head mixed the actions")


def test_nothink_is_the_forced_no_think_completion(tiny, items):
    out = tiny.encode(items, mode="nothink", batch_size=4)
    forced = tiny.encode(items, mode="gen", completions=[tiny.no_think] * len(items), batch_size=4)
    np.testing.assert_array_equal(out.vectors, forced.vectors)
    assert out.reasoned == [False] * len(items) and out.gen_tokens == [0] * len(items)
    # the same as decoding <no_think> then the forced <gen_emb> from the prefill's KV cache
    bb = tiny.backbone
    prompts = bb.prepare(items, [tiny.prompt(s) for s in items])
    vecs, ids, found = tiny.generate(prompts, max_new_tokens=3, first=tiny.ids["no_think"])
    assert all(
        f and i == [tiny.ids["no_think"], tiny.ids["gen_emb"]] for i, f in zip(ids, found, strict=True)
    )
    decoded = torch.nn.functional.normalize(vecs.float(), dim=-1).numpy()
    assert_same_vectors(decoded, out.vectors, tiny.dtype_name, atol=2e-5)


def test_think_mode_always_reasons(tiny, items):
    out = tiny.encode(items, mode="think", batch_size=4, max_new_tokens=5)
    assert all(t.startswith("<think>") for t in out.texts) and out.reasoned == [True] * len(items)
    assert all(1 <= n <= 5 for n in out.gen_tokens)
    gen = tiny.encode(items, mode="gen", batch_size=4, max_new_tokens=5)
    assert out.texts != gen.texts  # the random model rarely picks <think> itself


@pytest.mark.parametrize("budgets", [[0, 6], [0, 2, 6]])
def test_adaptive_equals_the_fixed_mode_of_each_action(tiny, items, budgets):
    tiny.config.policy.budgets = budgets
    tiny.policy = type(tiny.policy)(64, len(budgets))
    try:
        actions = mixed_policy(tiny, items)
        out = tiny.encode(items, mode="adaptive", batch_size=3)
        names = tiny.config.policy.action_names()
        taken = np.array([names.index(a) for a in out.actions])
        # the decision read inside adaptive (its own prefill) == the head on disc vectors; in bf16 the two
        # states differ by rounding, so a near-tie may go either way: only clear decisions must agree
        logits = tiny.policy(torch.from_numpy(tiny.encode(items).vectors)).detach()
        top2 = logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]).numpy() > (0 if tiny.dtype_name == "float32" else 0.2)
        assert (taken == actions)[clear].all() and clear.sum() >= len(items) // 2
        assert out.reasoned == [bool(a) for a in taken]
        actions = taken  # every row must equal the fixed mode of the action it took
        nothink = tiny.encode(items, mode="nothink", batch_size=5)
        for a, cap in enumerate(budgets):
            rows = np.flatnonzero(actions == a)
            if a == 0:
                assert_same_vectors(out.vectors[rows], nothink.vectors[rows], tiny.dtype_name)
                assert all(out.texts[i] == tiny.no_think and out.gen_tokens[i] == 0 for i in rows)
                continue
            think = tiny.encode([items[i] for i in rows], mode="think", max_new_tokens=cap, batch_size=2)
            assert_same_vectors(out.vectors[rows], think.vectors, tiny.dtype_name)
            assert [out.texts[i] for i in rows] == think.texts
            assert all(out.gen_tokens[i] <= cap for i in rows)
    finally:
        tiny.config.policy.budgets = [0, 64]
        tiny.policy = type(tiny.policy)(64, 2)
        tiny.reset_policy()


def test_untrained_head_is_the_lm_preference(tiny, items):
    tiny.reset_policy()
    bb = tiny.backbone
    prompts = bb.prepare(items, [tiny.prompt(s) for s in items])
    hidden, _ = bb.prefill(prompts, use_cache=False)
    lm = bb.logits(hidden[:, -1])[:, [tiny.ids["no_think"], tiny.ids["think_open"]]]  # (N, 2)
    head = tiny.policy(hidden[:, -1])
    assert torch.equal(lm.argmax(-1), head.argmax(-1))
    tol = 1e-4 if tiny.dtype_name == "float32" else 1e-2  # bf16: the LM's logits are a bf16 product
    torch.testing.assert_close(
        head, lm / hidden[:, -1].float().norm(dim=-1, keepdim=True), atol=tol, rtol=tol
    )


def test_policy_round_trip_and_fingerprints(tiny, items, tmp_path):
    before = tiny.fingerprint(), tiny.policy_fingerprint()
    mixed_policy(tiny, items, seed=1)
    assert tiny.fingerprint() == before[0]  # fixed-mode vectors (and their caches) are untouched
    assert tiny.policy_fingerprint() != before[1]
    out = tiny.encode(items, mode="adaptive", max_new_tokens=4)
    tiny.save_pretrained(tmp_path / "m")
    loaded = Embedder.from_pretrained(tmp_path / "m")
    assert loaded.policy_fingerprint() == tiny.policy_fingerprint()
    loaded.config.policy.trained = "another provenance note, e.g. a machine's data path"
    assert loaded.policy_fingerprint() == tiny.policy_fingerprint()  # provenance is not behaviour
    loaded.config.policy.temperature += 1.0
    assert loaded.policy_fingerprint() != tiny.policy_fingerprint()  # a setting that changes actions
    loaded.config.policy.temperature -= 1.0
    again = loaded.encode(items, mode="adaptive", max_new_tokens=4)
    assert again.actions == out.actions and again.texts == out.texts
    np.testing.assert_array_equal(again.vectors, out.vectors)
    tiny.reset_policy()


def test_bad_budgets_are_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "embedder_config.json"
    path.write_text(path.read_text().replace('"budgets": [\n      0,\n      64\n    ]', '"budgets": [5, 64]'))
    with pytest.raises(InputError, match="budgets"):
        Embedder.from_pretrained(tmp_path / "m")


def test_embed_cli_adaptive_says_what_each_item_did(tiny, tmp_path, capsys):
    from mmemb.cli import main

    actions = mixed_policy(tiny, [Sample(id=f"q{i}", text=f"query {i}") for i in range(8)])
    tiny.save_pretrained(tmp_path / "m")
    tiny.reset_policy()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"id": "q{i}", "text": "query {i}"}}\n' for i in range(8)))
    out = tmp_path / "v.npy"
    args = ["embed", "--model", str(tmp_path / "m"), "--input", str(src), "--out", str(out), "--quiet"]
    assert main([*args, "--mode", "adaptive"]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".gen.jsonl").read_text().splitlines()]
    assert [r["reasoned"] for r in rows] == [bool(a) for a in actions]
    assert [r["action"] for r in rows] == [["no_think", "think"][a] for a in actions]
    assert all((r["gen_tokens"] > 0) == r["reasoned"] for r in rows)
    assert f"reasoned on {int(actions.sum())}/8" in capsys.readouterr().err
    assert np.load(out).shape == (8, 64)
