"""Where mmemb keeps what it builds and caches, spelled once. The root is $MMEMB_CACHE, else ~/.cache/mmemb.

cache_dir()        the root
embeddings_dir()   the embedding cache of eval, rationale selection and policy outcomes (cache.py)
mini_root()        the default mmeb-mini build (seed MINI_SEED)
pages_dir()        MMEB-V2 document pages taken out of corpus parquet files
"""

from __future__ import annotations

import os
from pathlib import Path

MINI_SEED = 0


def cache_dir() -> Path:
    return Path(os.environ.get("MMEMB_CACHE") or Path.home() / ".cache" / "mmemb")


def embeddings_dir() -> Path:
    return cache_dir() / "embeddings"


def mini_root() -> Path:
    return cache_dir() / "data" / f"mmeb-mini-seed{MINI_SEED}"


def pages_dir() -> Path:
    return cache_dir() / "mmeb-v2-pages"
