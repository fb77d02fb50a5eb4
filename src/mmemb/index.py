"""A FAISS index over `mmemb embed`'s shards, saved with the identity of the vectors it holds.

    INDEX/index.faiss   the FAISS index: inner product on unit vectors (= cosine)
    INDEX/ids.json      row -> item id
    INDEX/meta.json     kind, the model's fingerprint, the mode and its space, dim, rows, the shards it came from

Kinds: "flat" (exact, `IndexFlatIP`) and "hnsw" (approximate, `IndexHNSWFlat`, M=32, inner product; no
training, recall set by efSearch at query time). A query must come from the same model (fingerprint) and
a mode comparable with the indexed one (`EmbedderConfig.valid_mode_pairs`, in spaces): anything else is
refused, since the scores would mean nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_json, replace_dir, staging_dir
from .shards import read_shards
from .types import InputError, mode_space

KINDS = ("flat", "hnsw")
HNSW_M = 32
EF_SEARCH = 128


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("the index needs FAISS: pip install 'mmemb[index]' (faiss-cpu)") from None
    return faiss


def build(shards: Path, out: Path, kind: str = "flat") -> dict:
    """Index the vectors of a finished shard folder into `out` (written whole, then swapped in)."""
    if kind not in KINDS:
        raise InputError(f"index kind {kind!r}: choose one of {list(KINDS)}")
    faiss = _faiss()
    vectors, ids, manifest = read_shards(shards)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
    dim = vectors.shape[1]
    index = (
        faiss.IndexFlatIP(dim)
        if kind == "flat"
        else faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    )
    index.add(vectors)
    meta = {"kind": kind, "fingerprint": manifest["fingerprint"], "model": manifest["model"],
            "mode": manifest["mode"], "space": mode_space(manifest["mode"]), "dim": dim, "rows": len(ids),
            "policy_fingerprint": manifest.get("policy_fingerprint"), "shards": str(Path(shards).resolve())}  # fmt: skip
    staged = staging_dir(out)
    faiss.write_index(index, str(staged / "index.faiss"))
    (staged / "ids.json").write_text(json.dumps(ids))
    atomic_json(staged / "meta.json", meta)
    replace_dir(staged, out)
    return meta


@dataclass
class Index:
    index: object
    ids: list[str]
    meta: dict

    @classmethod
    def load(cls, folder: Path) -> Index:
        faiss, folder = _faiss(), Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            ids = json.loads((folder / "ids.json").read_text())
            index = faiss.read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"--index {folder}: not an index built by `mmemb index build` ({e})") from None
        if index.ntotal != len(ids):
            raise InputError(f"--index {folder}: {index.ntotal} vectors but {len(ids)} ids; rebuild it")
        if meta["kind"] == "hnsw":
            index.hnsw.efSearch = EF_SEARCH
        return cls(index, ids, meta)

    def check(self, embedder, mode: str) -> None:
        """Refuse queries from another model, or from a mode whose space is not comparable with the index's."""
        fp = embedder.fingerprint()
        if fp != self.meta["fingerprint"]:
            raise InputError(
                f"the index holds vectors of model {self.meta['model']!r} (fingerprint {self.meta['fingerprint']}); "
                f"this model's fingerprint is {fp}: its vectors are not comparable. Search with that model, or "
                "rebuild the index from this model's embeddings"
            )
        pair = [mode_space(mode), self.meta["space"]]
        if pair not in [list(p) for p in embedder.config.valid_mode_pairs]:
            raise InputError(
                f"query mode {mode!r} ({pair[0]} space) cannot search an index of {self.meta['mode']!r} vectors "
                f"({pair[1]} space); valid space pairs: {embedder.config.valid_mode_pairs}"
            )

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        """Per query row (Q, D): its top k (id, score), best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.meta["dim"]:
            raise InputError(f"queries are {q.shape[1]}-d; the index holds {self.meta['dim']}-d vectors")
        scores, rows = self.index.search(q, min(k, len(self.ids)))  # (Q, k) each
        return [[(self.ids[r], float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
                for srow, rrow in zip(scores, rows, strict=True)]  # fmt: skip
