"""Matryoshka dimensions: stage 1 trains nested prefixes (loss.matryoshka_dims), the saved config records
them, and `dimensions` (encode, embed, eval, index, server) truncates and renormalises for such a model only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmemb import Embedder, InputError
from mmemb.cli import main
from mmemb.embedder import truncate
from mmemb.train.stage1 import batch_backward, train_stage1

from .test_train import cfg_for, setup, world  # noqa: F401 (the module fixture)


@pytest.fixture
def trained_at(nano, monkeypatch):
    """nano as if stage 1 had trained it at 64 and 128 (the config field is all `dimensions` reads)."""
    monkeypatch.setattr(nano.config, "matryoshka_dims", [64, 128])
    return nano


def test_dimensions_truncate_and_renormalise_only_at_trained_widths(nano, monkeypatch):
    texts = ["a red circle", "two cats on a mat", "a page of text"]
    full = nano.encode(texts).vectors  # (3, 576)
    before = nano.fingerprint()
    with pytest.raises(InputError, match="not trained with Matryoshka dimensions"):
        nano.encode(texts, dimensions=64)
    assert nano.encode(texts, dimensions=576).vectors.shape == (3, 576)  # the full width is always there
    monkeypatch.setattr(nano.config, "matryoshka_dims", [64, 128])
    assert nano.fingerprint() != before  # another model: its caches are its own
    small = nano.encode(texts, dimensions=64).vectors
    assert small.shape == (3, 64) and np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-5)
    expect = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expect, atol=1e-6)
    with pytest.raises(InputError, match=r"trained at widths \[64, 128\] and 576; give one of those"):
        nano.encode(texts, dimensions=100)
    monkeypatch.setattr(nano.config, "matryoshka_dims", [])
    assert nano.fingerprint() == before  # an empty list is the config of every model saved before it


def test_stage1_trains_the_prefixes_and_saves_them_in_the_config(world, tmp_path):  # noqa: F811
    plain = cfg_for(world, tmp_path)
    nested = cfg_for(world, tmp_path, "loss.matryoshka_dims=[8,16]")
    losses = []
    for cfg in (plain, nested):
        emb, examples, _ = setup(world, cfg)
        out = batch_backward(emb.backbone, emb, examples[:4], cfg, lambda x: x.backward())
        losses.append(float(out["disc_loss"]))
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)  # the prefixes are in the loss
    final = train_stage1(
        cfg_for(world, tmp_path, "loss.matryoshka_dims=[8,16]", "run.max_steps=1"), log=False
    )
    emb = Embedder.from_pretrained(final)
    assert emb.config.matryoshka_dims == [8, 16]
    assert emb.encode(["a red circle"], dimensions=16).vectors.shape == (1, 16)
    with pytest.raises(InputError, match="increasing widths"):
        train_stage1(
            cfg_for(world, tmp_path / "bad", "loss.matryoshka_dims=[16,8]", "run.max_steps=1"), log=False
        )


def test_embed_index_search_and_eval_take_dimensions(trained_at, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(lambda cls, name, **kw: trained_at))
    src = tmp_path / "items.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"q{i}", "text": f"item {i} " + "cats " * i}) + "\n" for i in range(5))
    )
    assert (
        main(
            ["embed", "--input", str(src), "--out", str(tmp_path / "v.npy"), "--dimensions", "64", "--quiet"]
        )
        == 0
    )
    vecs = np.load(tmp_path / "v.npy")
    np.testing.assert_allclose(
        vecs,
        truncate(trained_at.encode([f"item {i} " + "cats " * i for i in range(5)]).vectors, 64),
        atol=1e-6,
    )
    out = tmp_path / "shards"
    assert main(["embed", "--input", str(src), "--out", str(out), "--dimensions", "128", "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["dim"] == 128
    assert (
        main(["embed", "--input", str(src), "--out", str(out), "--quiet"]) == 2
    )  # another width: another run
    assert "differs in dim" in capsys.readouterr().err
    assert main(["index", "build", "--shards", str(out), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert (
        main(["search", "--index", str(tmp_path / "idx"), "--query", "item 3 cats cats cats", "--k", "1"])
        == 0
    )
    assert capsys.readouterr().out.split("\t")[2].strip() == "q3"  # the query embedded at the index's 128
    assert main(["embed", "--input", str(src), "--out", str(tmp_path / "w.npy"), "--dimensions", "100"]) == 2
    assert "give one of those" in capsys.readouterr().err


def test_the_server_answers_a_trained_width_and_refuses_others(trained_at):
    from fastapi.testclient import TestClient

    from mmemb.serve.app import ServeSettings, create_app

    with TestClient(create_app(trained_at, ServeSettings(model_name="m"))) as client:
        r = client.post("/v1/embeddings", json={"input": ["a red circle"], "dimensions": 64})
        assert r.status_code == 200, r.text
        vec = np.array(r.json()["data"][0]["embedding"])
        assert vec.shape == (64,) and abs(np.linalg.norm(vec) - 1) < 1e-5
        r = client.post("/v1/embeddings", json={"input": ["a red circle"], "dimensions": 100})
        assert r.status_code == 400 and "trained at widths [64, 128]" in r.text


def test_eval_scores_the_prefixes_of_the_cached_vectors(trained_at, tmp_path):
    from pathlib import Path

    from mmemb.cache import CachedEncoder
    from mmemb.eval.evaluate import evaluate, load, resolve
    from mmemb.eval.runner import EvalSettings, evaluate_task

    from .conftest import needs_debian_data

    needs_debian_data(Path("/usr/share/openclipart/png"))
    task = load(resolve("mmeb-mini", None), "Clipart-T2I")
    task.limit(6)
    fp = trained_at.fingerprint()
    small = evaluate_task(task, trained_at, EvalSettings(dimensions=64), tmp_path / "cache", fp)
    cache = CachedEncoder(trained_at, tmp_path / "cache", 16, 256, False, fp)  # eval's full vectors
    q = truncate(cache.encode(task.items, task.queries, "disc").get(task.queries), 64)  # (Q, 64)
    for row, per_query in enumerate(small.per_query):
        c = truncate(cache.encode(task.items, task.local[row], "disc").get(task.local[row]), 64)  # (L, 64)
        scores = c @ q[row]  # (L,)
        gold = task.local[row].index(next(k for k, v in task.relevance[row].items() if v > 0))
        assert per_query["gold_rank"] == int((scores > scores[gold]).sum()) + 1
    assert small.embedded_now > 0 and cache.embedded_now == 0  # the cache holds full widths: nothing new
    with pytest.raises(InputError, match="give one of those"):  # refused before anything is embedded
        evaluate(
            trained_at,
            "mmeb-mini",
            tmp_path / "out",
            EvalSettings(dimensions=100),
            cache_root=tmp_path / "c2",
        )
    assert not (tmp_path / "c2").exists()
