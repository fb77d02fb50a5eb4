"""Numeric precision: one setting, `backbone.dtype`, saved with the model (`auto` by default).

    auto      -> bfloat16 where the hardware computes it natively (a CUDA GPU with bf16; a CPU with
                 avx512_bf16 or AMX), else float32
    float32 | bfloat16 | float16  -> exactly that

Inference casts the whole backbone to the resolved dtype (bf16 weights run nano 2.5-4x faster than fp32 on
a CPU with avx512_bf16: benchmarks/bench_precision.py). Training keeps float32 master weights and AdamW
state for every trainable tensor, casts the frozen ones (they need no master copy) and runs the forward
under autocast (`train/stage1.py`). The fingerprint of a model hashes the *resolved* dtype, so embedding
caches never mix vectors computed in two precisions.
"""

from __future__ import annotations

import torch

from .types import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SETTINGS = ("auto", *DTYPES)
NAMES = {v: k for k, v in DTYPES.items()}


def bf16_native(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and why (for the line printed at load)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"CUDA device {torch.cuda.get_device_name(device)} {'has' if ok else 'lacks'} bf16"
    if device.type == "cpu":
        flags = [name for name, check in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                          ("AMX", "_is_amx_tile_supported"))
                 if getattr(torch.cpu, check, lambda: False)()]  # fmt: skip
        if flags:
            return True, f"this CPU has {' and '.join(flags)}"
        return False, "this CPU has neither avx512_bf16 nor AMX (bf16 would be emulated, slower than fp32)"
    return False, f"device {device.type}: bf16 not assumed"


def resolve(setting: str, device: torch.device | str = "cpu") -> tuple[torch.dtype, str]:
    """`backbone.dtype` -> (torch dtype, why). `auto` picks bfloat16 where it is native, else float32."""
    if setting not in SETTINGS:
        raise InputError(f"backbone.dtype {setting!r}: choose one of {list(SETTINGS)}")
    if setting != "auto":
        return DTYPES[setting], "set explicitly"
    ok, why = bf16_native(device)
    return (torch.bfloat16 if ok else torch.float32), f"dtype auto: {why}"


def autocast(dtype: torch.dtype, device: torch.device | str = "cpu"):
    """The training forward's autocast context (a no-op for float32)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
