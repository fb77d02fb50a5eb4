"""The one embedding cache (cache.py) under eval, rationale selection and the policy's outcomes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmemb.cache import CachedEncoder, EmbeddingCache, Generation, cache_tag, completion_key, content_key
from mmemb.types import Embeddings, Sample


class CountingEmbedder:
    """Vectors from the text; records what it was asked to embed."""

    def __init__(self):
        self.calls: list[tuple[str, list[str], list[str] | None]] = []
        self.policy = "p1"

    def fingerprint(self):
        return "fp"

    def policy_fingerprint(self):
        return self.policy

    def encode(self, samples, mode="disc", batch_size=8, progress=False, max_new_tokens=None, temperature=None,
               completions=None):  # fmt: skip
        self.calls.append((mode, [s.text for s in samples], completions))
        vecs = np.array(
            [[len(s.text), len(completions[i]) if completions else 0] for i, s in enumerate(samples)]
        )
        n = len(samples)
        return Embeddings(vecs.astype(np.float32), mode, texts=[f"<think>{s.text}" for s in samples] if mode != "disc" else None,
                          gen_tokens=[3] * n, seconds=[0.5] * n, reasoned=[mode != "disc"] * n,
                          gen_emb_found=[True] * n, actions=["think"] * n if mode == "adaptive" else None)  # fmt: skip


def samples(n):
    return [Sample(id=str(i), text="x" * (i + 1)) for i in range(n)]


def test_only_missing_keys_are_embedded_in_shards_and_reread_from_disk(tmp_path):
    e = CountingEmbedder()
    enc = CachedEncoder(e, tmp_path, shard_size=2)
    vecs, info = enc.samples(samples(5), "disc")
    assert vecs[:, 0].tolist() == [1, 2, 3, 4, 5] and enc.embedded_now == 5
    assert [len(c[1]) for c in e.calls] == [2, 2, 1]  # shard by shard
    assert len(list((tmp_path / "fp" / "disc").glob("shard-*.json"))) == 3
    again = CachedEncoder(e, tmp_path)  # a new process: read from disk
    vecs2, info2 = again.samples(samples(6), "disc")
    assert again.embedded_now == 1 and e.calls[-1][1] == ["xxxxxx"]
    np.testing.assert_array_equal(vecs2[:5], vecs)
    assert info2[0] == info[0] == {"seconds": 0.5, "gen_tokens": 3, "gen_emb_found": None, "reasoned": False}


def test_tags_name_what_changes_the_vectors(tmp_path):
    # the folder names of caches written before the shared layer: warm caches stay valid
    assert cache_tag("disc") == "disc" and cache_tag("nothink", Generation(5, 0.7, 2)) == "nothink"
    assert cache_tag("think", Generation(64)) == "think-n64-tNone-s0"
    assert cache_tag("adaptive", Generation(), "abc") == "adaptive-nNone-tNone-s0-pabc"
    e = CountingEmbedder()
    enc = CachedEncoder(e, tmp_path)
    items = {content_key(s): s for s in samples(2)}
    enc.encode(items, list(items), "adaptive")
    e.policy = "p2"  # a retrained policy head: its vectors are not the old ones
    enc.encode(items, list(items), "adaptive")
    assert enc.embedded_now == 4
    assert sorted(p.name for p in (tmp_path / "fp").iterdir()) == [
        "adaptive-nNone-tNone-s0-pp1",
        "adaptive-nNone-tNone-s0-pp2",
    ]
    think = enc.encode(items, list(items), "think", Generation(8))
    assert think.info[next(iter(items))]["text"].startswith("<think>")


def test_teacher_forced_completions_are_keyed_by_their_text(tmp_path):
    e = CountingEmbedder()
    enc = CachedEncoder(e, tmp_path)
    s = samples(1)[0]
    keys = [completion_key(s, "a"), completion_key(s, "bbb")]
    assert keys[0] != keys[1] and keys[0].startswith(content_key(s))
    out = enc.encode(
        {k: s for k in keys},
        keys,
        "gen",
        completions=dict(zip(keys, ["a", "bbb"], strict=True)),
        tag="forced",
    )
    assert out.get(keys)[:, 1].tolist() == [1, 3] and e.calls[0][2] == ["a", "bbb"]
    meta = json.loads(next((tmp_path / "fp" / "forced").glob("shard-*.json")).read_text())
    assert meta["info"] == [{"seconds": 0.5}, {"seconds": 0.5}]  # the completion is the caller's, not stored
    assert EmbeddingCache(tmp_path, "fp", "forced").missing(keys) == []


def _corruptions():
    """How a shard goes bad on disk: (name, what to do to its .json and .npy paths)."""

    def permute_rows(meta, npy):
        v = np.load(npy)
        np.save(npy, v[::-1].copy(), allow_pickle=False)  # a valid .npy with its rows in another order

    def permute_keys(meta, npy):
        d = json.loads(meta.read_text())
        d["keys"] = d["keys"][::-1]
        meta.write_text(json.dumps(d))

    def legacy(meta, npy):
        d = json.loads(meta.read_text())
        del d["sha256"]
        meta.write_text(json.dumps(d))

    return {
        "empty json": lambda meta, npy: meta.write_bytes(b""),
        "torn json": lambda meta, npy: meta.write_bytes(meta.read_bytes()[:-7]),
        "empty npy": lambda meta, npy: npy.write_bytes(b""),
        "torn npy": lambda meta, npy: npy.write_bytes(npy.read_bytes()[:-5]),
        "missing npy": lambda meta, npy: npy.unlink(),
        "rows permuted": permute_rows,
        "keys permuted": permute_keys,
        "no checksum": legacy,
        "not utf-8": lambda meta, npy: meta.write_bytes(b"\xff\xfe{"),
    }


@pytest.mark.parametrize("how", list(_corruptions()))
def test_a_bad_shard_is_named_set_aside_and_re_embedded_never_trusted(tmp_path, capsys, how):
    e = CountingEmbedder()
    want, _ = CachedEncoder(e, tmp_path, shard_size=3).samples(samples(6), "disc")
    meta = sorted((tmp_path / "fp" / "disc").glob("shard-*.json"))[0]
    _corruptions()[how](meta, meta.with_suffix(".npy"))
    capsys.readouterr()
    again = CachedEncoder(e, tmp_path, shard_size=3)
    got, _ = again.samples(samples(6), "disc")
    np.testing.assert_array_equal(got, want)  # the same vectors: never the corrupted ones
    assert again.embedded_now == 3  # only the bad shard's items
    err = capsys.readouterr().err
    said = "1 cache shard(s) in" if how == "no checksum" else f"cache shard {meta}"
    assert said in err and "embedded again" in err
    assert (meta.parent / (meta.name + ".bad")).exists() and not meta.exists()
    CachedEncoder(e, tmp_path).samples(samples(6), "disc")  # the next run: clean, nothing said
    assert capsys.readouterr().err == ""
