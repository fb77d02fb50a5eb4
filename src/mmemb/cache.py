"""The embedding cache, one for every stage: evaluation, rationale selection (teacher-forced completions) and
the policy's outcomes all embed through `CachedEncoder`.

    content_key(sample)            changes when anything the model sees changes (text, instruction, media bytes)
    cache_tag(mode, gen, policy)   the folder of a mode: what, beyond the model, changes its vectors
    EmbeddingCache(root, fp, tag)  <root>/<fingerprint>/<tag>/shard-<id>.npy  (N, D) float32
                                                              shard-<id>.json {"keys": [...], "info": [...]}
    CachedEncoder(embedder, root)  .encode(items, keys, mode, ...) embeds the keys the cache lacks

A shard counts only once its .json exists, and both files are written atomically and fsync'ed (io.py), the
.json last, so an interrupted run leaves complete shards only: the next run resumes from them. The .json holds
a checksum of the vectors and the keys: a shard that was torn, emptied or changed later (rows permuted, a
key edited) is never read as valid; it is set aside as *.bad, named on stderr, and its items are embedded
again, so a corrupted cache costs time, never a crash or a changed score.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .distributed import ONE, Ranks
from .io import atomic_write
from .types import REASONING_MODES, InputError, Sample

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
        legacy = 0
        for meta in sorted(self.dir.glob("shard-*.json")) if self.dir.is_dir() else []:
            try:
                keys, vecs, info = read_shard(meta)
            except ShardError as e:
                legacy += e.legacy
                set_aside(meta, None if e.legacy else str(e))
                continue
            for k, v, i in zip(keys, vecs, info, strict=True):
                self.vectors[k], self.info[k] = v, i
        if legacy:
            print(f"mmemb: {legacy} cache shard(s) in {self.dir} were written by an older mmemb without a "
                  "checksum; set aside as *.bad, their items are embedded again (once)", file=sys.stderr)  # fmt: skip

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.vectors]

    def add(self, keys: list[str], vectors: np.ndarray, info: list[dict]) -> None:
        """Store one shard: vectors (N, D) for `keys`, with per-item info (latency, tokens...); the .json
        holds the checksum of the vectors and keys, so a changed or torn shard is never read as valid."""
        name = f"shard-{uuid.uuid4().hex[:12]}"
        buf = io.BytesIO()
        np.save(buf, vectors.astype(np.float32), allow_pickle=False)
        atomic_write(self.dir / f"{name}.npy", buf.getvalue())
        meta = {"keys": keys, "info": info, "sha256": shard_digest(buf.getvalue(), keys)}
        atomic_write(self.dir / f"{name}.json", json.dumps(meta))
        for k, v, i in zip(keys, vectors, info, strict=True):
            self.vectors[k], self.info[k] = v, i

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


class ShardError(Exception):
    """A cache shard that cannot be trusted (says why); `legacy`: only that it has no checksum."""

    def __init__(self, why: str, legacy: bool = False) -> None:
        super().__init__(why)
        self.legacy = legacy


def shard_digest(npy: bytes, keys: list[str]) -> str:
    """The checksum of a shard: its .npy bytes and its keys, in order (rows and keys are paired by order)."""
    return hashlib.sha256(npy + json.dumps(keys).encode()).hexdigest()


def read_shard(meta: Path) -> tuple[list[str], np.ndarray, list[dict]]:
    """The keys, vectors (N, D) and info of the shard whose .json is `meta`, checked against its checksum."""
    try:
        data = json.loads(meta.read_bytes())
        npy = meta.with_suffix(".npy").read_bytes()
    except (OSError, ValueError) as e:  # ValueError: torn or empty JSON, bad UTF-8
        raise ShardError(f"cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not {"keys", "info", "sha256"} <= set(data):
        raise ShardError("has no checksum", legacy=isinstance(data, dict) and {"keys", "info"} <= set(data))
    keys, info = data["keys"], data["info"]
    if not isinstance(keys, list) or not isinstance(info, list) or len(keys) != len(info):
        raise ShardError("its keys and info do not pair up")
    if shard_digest(npy, keys) != data["sha256"]:
        raise ShardError("its vectors or keys changed since they were written (checksum mismatch)")
    try:
        vecs = np.load(io.BytesIO(npy), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ShardError(f"its vectors cannot be read ({e})") from None
    if vecs.ndim != 2 or len(vecs) != len(keys):
        raise ShardError(f"holds {vecs.shape} vectors for {len(keys)} keys")
    return keys, vecs, info


def set_aside(meta: Path, why: str | None) -> None:
    """Rename a bad shard's files to *.bad (kept for a look, never read again) and say `why` on stderr."""
    for path in (meta, meta.with_suffix(".npy")):
        try:
            path.replace(path.with_name(path.name + ".bad"))
        except (
            OSError
        ):  # already gone (another process set it aside), or a read-only cache: skipped all the same
            pass
    if why is not None:
        print(f"mmemb: cache shard {meta} {why}; set aside as {meta.name}.bad, its items are embedded again",
              file=sys.stderr)  # fmt: skip


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
        ranks: Ranks = ONE,
    ) -> None:
        self.embedder, self.root, self.ranks = embedder, Path(root), ranks
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
        name, r = tag or cache_tag(mode, gen, policy), self.ranks
        if r.world > 1:  # torchrun: every rank reads the cache as it is now, before any rank writes to it
            r.barrier()
            self._stores.pop(name, None)
        cache = self.store(name)
        todo = cache.missing(keys)
        r.barrier()
        chunks = [todo[start : start + self.shard_size] for start in range(0, len(todo), self.shard_size)]
        # each rank embeds every world-th chunk of what one process would: the same batches, the same vectors
        for chunk in chunks[r.rank :: r.world]:
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
        if r.world > 1 and todo:  # every rank's shards are written: read them all
            r.barrier()
            self._stores.pop(name)
            cache = self.store(name)
            lost = cache.missing(keys)
            if lost:
                raise InputError(f"{len(lost)} items another rank embedded are not in the cache {cache.dir}")
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
