"""On-disk embedding cache keyed by model fingerprint, mode and input content.

    <root>/<fingerprint>/<mode>/shard-<id>.npy   (N, D) float32 vectors
    <root>/<fingerprint>/<mode>/shard-<id>.json  {"keys": [...], "info": [...]}  written last

A shard counts only once its .json exists, and both files are written under temporary names and renamed,
so an interrupted run leaves complete shards only: the next run resumes from them, never from half a file.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from ..io import atomic_write


class EmbeddingCache:
    def __init__(self, root: Path, fingerprint: str, mode: str) -> None:
        self.dir = Path(root) / fingerprint / mode
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
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex[:12]}"
        atomic_write(
            self.dir / f"{name}.npy", lambda f: np.save(f, vectors.astype(np.float32), allow_pickle=False)
        )
        atomic_write(
            self.dir / f"{name}.json", lambda f: f.write(json.dumps({"keys": keys, "info": info}).encode())
        )
        for k, v, i in zip(keys, vectors, info, strict=True):
            self.vectors[k], self.info[k] = v, i

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
