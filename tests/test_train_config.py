"""Training config: defaults < YAML < key=value, strict errors before any compute, save -> load."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmemb.train.config import TrainConfig, load_train_config, save_train_config
from mmemb.types import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["nano.yaml", "qwen2vl-2b.yaml", "qwen3vl-4b.yaml"])
def test_shipped_configs_load(name):
    cfg = load_train_config(CONFIGS / name)
    assert cfg.loss.temperature == 0.02 and isinstance(cfg.optim.lr, float)


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\nbatch:\n  size: 16\n  chunk: 4\n")
    cfg = load_train_config(
        path, ["batch.size=8", "data.tasks=[Clipart-CLS, Clipart-QA]", "run.tensorboard=false"]
    )
    assert cfg.optim.lr == 3e-4  # from the file (1e-4 style parsed as a float)
    assert cfg.batch.size == 8 and cfg.batch.chunk == 4  # override beats file; file beats default
    assert cfg.data.tasks == ["Clipart-CLS", "Clipart-QA"] and cfg.run.tensorboard is False
    assert cfg.loss.disc == TrainConfig().loss.disc  # untouched default
    assert load_train_config(None, ["model.backbone.lora_r=4"]).model.backbone.lora_r == 4


def test_save_then_load_gives_the_same_tree(tmp_path):
    cfg = load_train_config(CONFIGS / "nano.yaml", ["optim.lr=2e-5"])
    save_train_config(cfg, tmp_path / "resolved.yaml")
    assert load_train_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("optim:\n  learning_rate: 1e-4\n", [], r"c\.yaml\.optim: unknown key\(s\) \['learning_rate'\]"),
        ("batch:\n  size: many\n", [], r"c\.yaml\.batch\.size: expected int, got str"),
        ("", ["optim.lrr=1"], r"unknown key 'optim\.lrr'"),
        ("", ["optim.lr"], "expected key=value"),
        ("", ["batch.size=abc"], r"batch\.size: expected int"),
        ("", ["data.variant=some"], "data.variant 'some': choose one of"),
        ("", ["batch.chunk=5"], r"batch\.chunk \(5\) must be 0 or divide batch\.size \(32\)"),
        ("optim: [1, 2\n", [], "not valid YAML"),
        ("", ["run.strategy=zero"], "run.strategy 'zero': choose one of"),
        ("", ["run.deepspeed_config=ds.json"], "set run.strategy=deepspeed"),
        (
            "",
            ["run.strategy=fsdp", "run.mixed_precision=fp16"],
            "fp16 is supported with run.strategy=ddp only",
        ),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_train_config(path, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="cannot read the config"):
        load_train_config(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {"zero_optimization": {"stage": 3}},
            "stage 3: mmemb supports ZeRO stages 1 and 2; .*run.strategy=fsdp",
        ),
        ({}, "stage 0"),
        ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}, "remove 'optimizer'"),
        ({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4}, "set it with batch.size"),
        ({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 8}, "batch.accumulation"),
        (
            {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}},
            "bf16.enabled is True but run.mixed_",
        ),
    ],
)
def test_deepspeed_config_contradicting_mmemb_is_refused(conf, message):
    from mmemb.train.parallel import deepspeed_config

    with pytest.raises(InputError, match=message):
        deepspeed_config(
            conf, load_train_config(None, ["run.strategy=deepspeed", "run.mixed_precision=no"]), "ds.json"
        )


def test_the_shipped_deepspeed_config_is_accepted():
    import json

    from mmemb.train.parallel import deepspeed_config

    conf = json.loads((CONFIGS / "deepspeed-zero2.json").read_text())
    out = deepspeed_config(
        conf, load_train_config(CONFIGS / "qwen2vl-2b.yaml", ["run.strategy=deepspeed"]), "x"
    )
    assert out["bf16"] == {"enabled": True} and out["train_micro_batch_size_per_gpu"] == 256


def test_deepspeed_config_is_filled_from_the_mmemb_config():
    from mmemb.train.parallel import deepspeed_config

    cfg = load_train_config(None, ["run.strategy=deepspeed", "run.mixed_precision=bf16", "batch.size=16"])
    conf = {"zero_optimization": {"stage": 2, "overlap_comm": True}, "train_micro_batch_size_per_gpu": "auto",
            "bf16": {"enabled": "auto"}, "train_batch_size": 64}  # fmt: skip
    out = deepspeed_config(conf, cfg, "ds.json")
    assert out["train_micro_batch_size_per_gpu"] == 16 and out["gradient_accumulation_steps"] == 1
    assert out["bf16"] == {"enabled": True} and out["fp16"] == {"enabled": False}
    assert (
        out["gradient_clipping"] == cfg.optim.max_grad_norm and out["managed_gradient_accumulation"] is False
    )
    assert out["zero_optimization"] == {"stage": 2, "overlap_comm": True} and "train_batch_size" not in out


def test_a_bad_deepspeed_config_file_is_named(tmp_path):
    from mmemb.train.parallel import ZeroStrategy

    path = tmp_path / "ds.json"
    path.write_text("{stage: 2")
    cfg = load_train_config(None, ["run.strategy=deepspeed", f"run.deepspeed_config={path}"])
    with pytest.raises(InputError, match=r"ds\.json'?: not valid JSON"):
        ZeroStrategy(None, cfg).read_config()
    cfg = load_train_config(None, ["run.strategy=deepspeed", f"run.deepspeed_config={tmp_path / 'no.json'}"])
    with pytest.raises(InputError, match="cannot read it"):
        ZeroStrategy(None, cfg).read_config()
