"""A PEFT adapter folder (as VLM2Vec-V2 publishes one: LoRA over Qwen2-VL) loads merged into its base."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mmemb import Embedder, InputError, Sample
from mmemb.testing.tiny_hf import build_tiny_hf

from .conftest import write_image


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """(base folder, adapter folder, merged reference folder) built with peft itself."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("peft")
    base = build_tiny_hf("qwen2_vl", root / "base")
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "adapter")  # random B: the adapter changes the vectors
    merged = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32), root / "adapter"
    ).merge_and_unload()
    merged.save_pretrained(root / "merged")
    for f in base.iterdir():  # tokenizer and image processor next to the merged weights
        if (
            f.suffix in (".json", ".txt", ".jinja")
            and f.name != "config.json"
            and not (root / "merged" / f.name).exists()
        ):
            shutil.copy(f, root / "merged" / f.name)
    return base, root / "adapter", root / "merged"


def items(tmp_path):
    img = write_image(tmp_path / "x.png", size=(48, 64), seed=3)
    return [Sample(id="t", text="a photo of a cat"), Sample(id="i", image=img, text="what is shown?")]


def test_adapter_folder_equals_merged_reference(adapter, tmp_path):
    base, folder, merged = adapter
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    ours = Embedder.from_pretrained(folder, dtype="float32", quiet=True).encode(items(tmp_path)).vectors
    ref = Embedder.from_pretrained(merged, dtype="float32", quiet=True).encode(items(tmp_path)).vectors
    plain = Embedder.from_pretrained(base, dtype="float32", quiet=True).encode(items(tmp_path)).vectors
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert np.abs(ours - plain).max() > 1e-3  # the adapter is really applied


def test_base_override_and_clear_errors(adapter, tmp_path):
    base, folder, _ = adapter
    moved = tmp_path / "adapter"
    shutil.copytree(folder, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="give the base model with --base"):
        Embedder.from_pretrained(moved, quiet=True)
    assert Embedder.from_pretrained(moved, dtype="float32", quiet=True, base=str(base)).backbone is not None
    other = build_tiny_hf("qwen3_vl", tmp_path / "other", width=96)
    with pytest.raises(InputError, match="does not fit its base model"):
        Embedder.from_pretrained(moved, quiet=True, base=str(other))


def test_plain_transformers_folder_says_it_is_not_the_published_model(adapter, capsys):
    base, _, _ = adapter
    Embedder.from_pretrained(base, dtype="float32")
    assert "not an mmemb model: this is a fresh, untrained mmemb embedder" in capsys.readouterr().err


def test_cli_base_flag(adapter, tmp_path, capsys):
    from mmemb.cli import main

    base, folder, _ = adapter
    moved = tmp_path / "adapter"
    shutil.copytree(folder, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")  # the base moved since the adapter was saved
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "a photo of a cat"}\n')
    argv = [
        "embed",
        "--model",
        str(moved),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--out",
        str(tmp_path / "v.npy"),
    ]
    assert main([*argv, "--dtype", "float32", "--base", str(base)]) == 0
    assert np.load(tmp_path / "v.npy").shape == (1, 64)
    assert main([*argv, "--dtype", "float32"]) == 2  # the recorded base is gone: a clear error, exit 2
    assert "give another with --base" in capsys.readouterr().err
