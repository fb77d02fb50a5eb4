"""Backbones behind one interface (base.Backbone): `nano` (embedded default) and `hf` (Qwen-VL family)."""

from __future__ import annotations

from pathlib import Path

from ..config import BackboneConfig
from ..types import InputError
from .base import Backbone


def build_backbone(config: BackboneConfig, saved: Path | None = None, dtype=None) -> Backbone:
    """Build the backbone `config` names. `saved`: a folder written by `Embedder.save_pretrained`. `dtype`:
    the torch dtype to load hf weights in (float32 when None); nano is built in float32 and cast after."""
    if config.kind == "nano":
        from .nano import NanoBackbone

        return NanoBackbone(config)
    if config.kind == "hf":
        from .hf import HFBackbone

        return HFBackbone(config, saved=saved, dtype=dtype)
    raise InputError(f"unknown backbone kind {config.kind!r}; choose 'nano' or 'hf'")
