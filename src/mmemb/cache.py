"""The embedding cache, one for every stage: evaluation, rationale selection (teacher-forced completions) and
the policy's outcomes all embed through `CachedEncoder`.

    content_key(sample)            changes when anything the model sees changes (text, instruction, media bytes)
    cache_tag(mode, gen, policy)   the folder of a mode: what, beyond the model, changes its vectors
    EmbeddingCache(root, fp, tag)  <root>/<fingerprint>/<tag>/shard-<id>.npy  (N, D) float32
                                                              shard-<id>.json {"keys": [...], "info": [...]}
    CachedEncoder(embedder, root)  .encode(items, keys, mode, ...) embeds the keys the cache lacks

A shard counts only once its .json exists, and both files are written atomically (io.py), the .json last,
so an interrupted run leaves complete shards only: the next run resumes from them, never from half a file.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io import atomic_write
from .types import REASONING_MODES, Sample

if TYPE_CHECKING:
    from .embedder import Embedder

_file_digests: dict[tuple[str, int, int], str] = {}


def content_key(sample: Sample) -> str:
    """A key that changes when anything the model sees changes: text, instruction, media bytes."""
    h = hashlib.sha256(json.dumps([sample.text, sample.instruction, sample.modality]).encode())
    for p in sample.media():
        h.update(_file_digest(Path(p)).encode())
    return h.hexdigest()[:24]


def completion_key(sample: Sample, completion: str) -> str:
    """The key of a sample read with a given (teacher-forced) completion."""
    return content_key(sample) + "-" + hashlib.sha256(completion.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _file_digests:
        _file_digests[memo] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _file_digests[memo]


@dataclass(frozen=True)
class Generation:
    """The generation settings that change a generating mode's vectors (None: the model's own)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    sample: int = 0  # pass@k: which sample (seeds the sampling)


def cache_tag(mode: str, gen: Generation = Generation(), policy: str = "") -> str:
    """Cache folder for a mode: anything that changes the vectors beyond the model itself (adaptive: the
    policy's fingerprint too, since the model fingerprint leaves the policy out)."""
    if mode in ("disc", "nothink"):
        return mode
    tag = f"{mode}-n{gen.max_new_tokens}-t{gen.temperature}-s{gen.sample}"
    return f"{tag}-p{policy}" if mode == "adaptive" else tag


class EmbeddingCache:
    def __init__(self, root: Path, fingerprint: str, tag: str) -> None:
        self.dir = Path(root) / fingerprint / tag
        self.vectors: dict[str, np.ndarray] = {}
        self.info: dict[str, dict] = {}
        if self.dir.is_dir():
            for meta in sorted(self.dir.glob("shard-*.json")):
                vec_path = meta.with_suffix(".npy")
                if not vec_path.is_file():
                    continue
                data = json.loads(meta.read_text())
                vecs = np.load(vec_path, allow_pickle=False)
                for k, v, i in zip(data["keys"], vecs, data["info"], strict=True):
                    self.vectors[k], self.info[k] = v, i

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.vectors]

    def add(self, keys: list[str], vectors: np.ndarray, info: list[dict]) -> None:
        """Store one shard: vectors (N, D) for `keys`, with per-item info (latency, tokens...)."""
        name = f"shard-{uuid.uuid4().hex[:12]}"
        atomic_write(
            self.dir / f"{name}.npy", lambda f: np.save(f, vectors.astype(np.float32), allow_pickle=False)
        )
        atomic_write(self.dir / f"{name}.json", json.dumps({"keys": keys, "info": info}))
        for k, v, i in zip(keys, vectors, info, strict=True):
            self.vectors[k], self.info[k] = v, i

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


class CachedEncoder:
    """An embedder behind the cache: `encode` embeds only the keys the cache lacks, `shard_size` at a time
    (each shard written as soon as it is done: what an interruption can lose), and counts them."""

    def __init__(
        self,
        embedder: Embedder,
        root: Path,
        batch_size: int = 16,
        shard_size: int = 256,
        progress: bool = True,
        fingerprint: str | None = None,
    ) -> None:
        self.embedder, self.root = embedder, Path(root)
        self.fingerprint = fingerprint or embedder.fingerprint()
        self.batch_size, self.shard_size, self.progress = batch_size, shard_size, progress
        self.embedded_now = 0  # items not found in the cache, over every call
        self._stores: dict[str, EmbeddingCache] = {}

    def store(self, tag: str) -> EmbeddingCache:
        if tag not in self._stores:
            self._stores[tag] = EmbeddingCache(self.root, self.fingerprint, tag)
        return self._stores[tag]

    def encode(
        self,
        items: dict[str, Sample],
        keys: list[str],
        mode: str,
        gen: Generation = Generation(),
        completions: dict[str, str] | None = None,
        tag: str = "",
    ) -> EmbeddingCache:
        """Make sure every key (of `items`) is cached in `mode`; returns the store holding them. completions:
        key -> the gen completion to read teacher-forced (tag names their folder, e.g. "forced")."""
        import torch

        policy = self.embedder.policy_fingerprint() if mode == "adaptive" else ""
        cache = self.store(tag or cache_tag(mode, gen, policy))
        todo = cache.missing(keys)
        for start in range(0, len(todo), self.shard_size):
            chunk = todo[start : start + self.shard_size]
            if mode != "disc" and (gen.temperature or 0) > 0:
                seed = hashlib.sha256(
                    f"{gen.sample}:{chunk[0]}".encode()
                ).hexdigest()  # stable across processes
                torch.manual_seed(int(seed[:8], 16))
            forced = {"completions": [completions[k] for k in chunk]} if completions is not None else {}
            out = self.embedder.encode(
                [items[k] for k in chunk],
                mode=mode,
                batch_size=self.batch_size,
                progress=self.progress,
                max_new_tokens=gen.max_new_tokens,
                temperature=gen.temperature,
                **forced,
            )
            if completions is not None:  # the text is the caller's: keep only the time
                info = [{"seconds": x} for x in out.seconds]
            else:
                info = [_info(out, i, mode) for i in range(len(chunk))]
            cache.add(chunk, out.vectors, info)
        self.embedded_now += len(todo)
        return cache

    def samples(
        self, samples: list[Sample], mode: str, gen: Generation = Generation()
    ) -> tuple[np.ndarray, list[dict]]:
        """Vectors (N, D) and per-item info of `samples`, in order, keyed by content."""
        keys = [content_key(x) for x in samples]
        cache = self.encode(dict(zip(keys, samples, strict=True)), keys, mode, gen)
        return cache.get(keys), [cache.info[k] for k in keys]


def _info(out, i: int, mode: str) -> dict:
    """What eval and the policy read back per item: latency, tokens, whether it reasoned, its text."""
    return (
        {
            "seconds": out.seconds[i],
            "gen_tokens": out.gen_tokens[i],
            "gen_emb_found": None if mode == "disc" else out.gen_emb_found[i],
            "reasoned": out.reasoned[i],
        }
        | ({"action": out.actions[i]} if mode == "adaptive" else {})
        | ({"text": out.texts[i]} if mode in REASONING_MODES else {})
    )
