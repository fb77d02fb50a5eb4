"""Training checkpoints: everything an exact resume needs, in safetensors and JSON (no pickle).

    <output>/checkpoints/step-000050/
        trainable.safetensors   the trainable parameters by name
        optimizer.safetensors   AdamW moments by parameter name (exp_avg, exp_avg_sq, step)
        rng.safetensors         torch CPU (and CUDA) generator states
        state.json              step, data order, optimizer hyper-parameters, python / numpy RNG states
        config.yaml             the resolved training config

A checkpoint is written into a temporary folder and renamed when complete, so a kill during a save leaves
the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import TrainConfig, save_train_config


def checkpoint_dir(output: Path, step: int) -> Path:
    return Path(output) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output: Path) -> Path | None:
    folder = Path(output) / "checkpoints"
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(
    output: Path,
    step: int,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    order_state: dict,
    cfg: TrainConfig,
    keep: int,
) -> Path:
    target = checkpoint_dir(output, step)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
    index = {id(p): n for n, p in params.items()}
    moments, hyper = {}, []
    for group in optimizer.param_groups:
        hyper.append({k: v for k, v in group.items() if k != "params"})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                moments[f"{index[id(p)]}::{key}"] = torch.as_tensor(value).detach().contiguous()
    save_file(moments, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    py_state = random.getstate()
    state = {
        "step": step,
        "order": order_state,
        "param_groups": hyper,
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": np.random.get_state(legacy=False),
    }
    (tmp / "state.json").write_text(json.dumps(state, default=_np) + "\n")
    save_train_config(cfg, tmp / "config.yaml")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in sorted(target.parent.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    path: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer
) -> dict:
    """Restore parameters, optimizer moments and RNG states in place; return state.json's content."""
    weights = load_file(str(path / "trainable.safetensors"))
    if set(weights) != set(params):
        raise ValueError(f"{path}: trainable parameters differ from this model's (the config changed?)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    state = json.loads((path / "state.json").read_text())
    moments = load_file(str(path / "optimizer.safetensors"))
    by_name = {p: n for n, p in params.items()}
    for group, hyper in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update(hyper)
        for p in group["params"]:
            prefix = f"{by_name[p]}::"
            entry = {k[len(prefix) :]: v for k, v in moments.items() if k.startswith(prefix)}
            if entry:
                optimizer.state[p] = entry
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy_rng"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)  # JSON gave a list
    np.random.set_state(np_state)
    return state


def _np(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")
