"""Training checkpoints: everything an exact resume needs, in safetensors and JSON (no pickle).

    <output>/checkpoints/step-000050/
        trainable.safetensors   the trainable parameters by name
        optimizer.safetensors   AdamW moments by parameter name (exp_avg, exp_avg_sq, step)
        rng.safetensors         torch CPU (and CUDA) generator states
        state.json              step, data order, optimizer hyper-parameters, python / numpy RNG states
        config.yaml             the resolved training config

A checkpoint is written into a temporary folder and renamed when complete, so a kill during a save leaves
the previous checkpoint as the newest complete one. All tensors are whole (unsharded), whatever
`run.strategy` trained them, so a checkpoint resumes under any strategy and number of processes.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..io import replace_dir, staging_dir
from ..types import InputError
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
    weights: dict[str, torch.Tensor],
    moments: dict[str, torch.Tensor],
    param_groups: list[dict],
    order_state: dict,
    cfg: TrainConfig,
    keep: int,
    processes: int = 1,
) -> Path:
    """Write full trainable `weights` by name, AdamW `moments` by 'name::key', the optimizer's hyper-parameters
    (its param_groups without the params), the data order and every RNG state."""
    target = checkpoint_dir(output, step)
    tmp = staging_dir(target)
    save_file({n: t.contiguous() for n, t in weights.items()}, str(tmp / "trainable.safetensors"))
    save_file({n: t.contiguous() for n, t in moments.items()}, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    py_state = random.getstate()
    state = {
        "step": step,
        "processes": processes,  # over which the global batch was split (a resume may split it otherwise)
        "order": order_state,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in param_groups],
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": np.random.get_state(legacy=False),
    }
    (tmp / "state.json").write_text(json.dumps(state, default=_np) + "\n")
    save_train_config(cfg, tmp / "config.yaml")
    replace_dir(tmp, target)
    for old in sorted(target.parent.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    path: Path, names: set[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Read a checkpoint and restore the RNG states; return (weights, moments, state.json's content).
    `names`: this model's trainable parameters, which must be the checkpoint's."""
    weights = load_file(str(path / "trainable.safetensors"))
    if set(weights) != names:
        raise InputError(f"{path}: its trainable parameters differ from this model's "
                         f"({len(weights)} saved, {len(names)} here): the model config changed?")  # fmt: skip
    state = json.loads((path / "state.json").read_text())
    moments = load_file(str(path / "optimizer.safetensors"))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy_rng"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)  # JSON gave a list
    np.random.set_state(np_state)
    return weights, moments, state


def _np(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")
