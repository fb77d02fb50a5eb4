"""How the training processes share the model (`run.strategy`): one small class per strategy.

    ddp        accelerate: one process, or replicas whose gradients DDP all-reduces once per optimizer step
    fsdp       torch FSDP2 (`fully_shard`) on every transformer block (the models' `_no_split_modules`), then
               on the whole backbone: parameters, gradients and AdamW moments are split across processes
    deepspeed  DeepSpeed ZeRO stage 1 or 2 (optimizer moments, and gradients at stage 2, split) from a JSON
               config; mmemb keeps its own AdamW, learning-rate schedule, batches and accumulation

mmemb applies FSDP2 and ZeRO itself instead of through accelerate's plugins: accelerate turns those plugins
off on CPU, so that path could never be tested without GPUs, while this one runs the same code on CPU (gloo)
and GPU (NCCL). Launch every strategy the same way: `accelerate launch --multi_gpu` or `torchrun`.

Checkpoints do not depend on the strategy: `gather` collects full (unsharded) trainable tensors and optimizer
moments by parameter name (a collective: every rank calls it), and `scatter` puts full tensors back into this
rank's shards. A checkpoint written by 8 FSDP ranks resumes on one process or under ZeRO (tested on CPU).
Only trainable tensors are gathered: the frozen ones never change, so the final model is the init model with
the trained tensors copied in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..types import InputError
from .config import TrainConfig, mixed_precision


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def make_strategy(name: str, accelerator, cfg: TrainConfig):
    return {"ddp": DDPStrategy, "fsdp": FSDPStrategy, "deepspeed": ZeroStrategy}[name](accelerator, cfg)


class DDPStrategy:
    """accelerate's DDP (or a single process): every rank holds the whole model and optimizer."""

    sharded = False
    # stage 1 may run the shared prompt prefix once per forward (Backbone.forward): its keys and values reach
    # the loss through the KV cache, not through a block's output
    shares_prefix = True

    def __init__(self, accelerator, cfg: TrainConfig):
        self.accelerator, self.cfg = accelerator, cfg

    def prepare(self, backbone: nn.Module) -> None:
        self.params = trainable(backbone)
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay
        )
        self.model, self._wrapped = self.accelerator.prepare(backbone, self.optimizer)
        # a context in which a backward accumulates locally (DDP all-reduces at the next backward outside it)
        self.no_sync = lambda: self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, max_norm: float) -> float:
        """Clip, step, zero the gradients; return the gradient norm before clipping."""
        norm = self.accelerator.clip_grad_norm_(list(self.params.values()), max_norm or float("inf"))
        self._wrapped.step()
        self._wrapped.zero_grad(set_to_none=True)
        return float(norm)

    def gather(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Full trainable weights by name, and AdamW state by 'name::key' (exp_avg, exp_avg_sq, step), on the
        main process's CPU; empty elsewhere. Every process must call it (sharded tensors are gathered one
        at a time, so no process holds more than one whole tensor on its device)."""
        keep = self.accelerator.is_main_process
        weights, moments = {}, {}
        for n, p in self.params.items():
            for key, value in [(None, p.detach()), *self.optimizer.state.get(p, {}).items()]:
                whole = _full(torch.as_tensor(value))  # a collective for a DTensor shard
                if keep:
                    (weights if key is None else moments)[n if key is None else f"{n}::{key}"] = whole.cpu()
        return weights, moments

    def scatter(self, weights: dict[str, torch.Tensor], moments: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n])
                state = {k.split("::", 1)[1]: v for k, v in moments.items() if k.startswith(f"{n}::")}
                if state:
                    self.optimizer.state[p] = {k: v.to(p.device) if v.dim() else v for k, v in state.items()}


class FSDPStrategy(DDPStrategy):
    """torch FSDP2. Gradients are reduce-scattered at every backward (no `no_sync`): accumulating them unsharded
    would cost a full copy of the gradients per rank, which is what sharding is for avoiding."""

    sharded = True
    # FSDP2 unshards a block for backward from a hook on the block's outputs; gradients that reach it through
    # the prefix's KV cache bypass that hook and find the parameters freed, so every row runs in full
    shares_prefix = False

    def prepare(self, backbone: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        device = self.accelerator.device
        backbone.to(device)
        mesh = init_device_mesh(device.type, (self.accelerator.num_processes,))
        bf16 = mixed_precision(self.cfg) == "bf16"
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
        )
        # FSDP2 shards contiguous tensors only: frozen channels_last convolutions (nano's vision tower) stay
        # whole on every rank; a trainable one cannot
        whole = {p for p in backbone.parameters() if not p.is_contiguous()}
        if any(p.requires_grad for p in whole):
            name = next(n for n, p in backbone.named_parameters() if p in whole and p.requires_grad)
            raise InputError(f"run.strategy=fsdp: trainable parameter {name} is not contiguous (FSDP2 cannot "
                             "shard it); use run.strategy=ddp or deepspeed")  # fmt: skip
        names = {n for m in backbone.modules() for n in getattr(m, "_no_split_modules", None) or ()}
        blocks = [m for m in backbone.modules() if type(m).__name__ in names]
        for block in blocks:  # innermost first does not matter: blocks do not nest
            fully_shard(block, mesh=mesh, mp_policy=policy, ignored_params=whole)
        # then the rest: embeddings, projector, heads
        fully_shard(backbone, mesh=mesh, mp_policy=policy, ignored_params=whole)
        self.model = backbone  # fully_shard changes the module in place; parameters are now DTensors
        self.params = trainable(backbone)
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay
        )

    no_sync = None

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(_full(norm))

    def scatter(self, weights, moments) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.to_local().copy_(_local(weights[n], p))
                state = {k.split("::", 1)[1]: v for k, v in moments.items() if k.startswith(f"{n}::")}
                if state:  # AdamW's moments are DTensors shaped like their parameter; `step` is a scalar
                    self.optimizer.state[p] = {
                        k: _shard_like(v, p) if v.dim() else v for k, v in state.items()
                    }


class ZeroStrategy(DDPStrategy):
    """DeepSpeed ZeRO 1/2 around mmemb's AdamW, with `managed_gradient_accumulation: false`: each backward
    (a GradCache chunk, an accumulated batch) adds to the gradients and mmemb's `step()` is the boundary where
    DeepSpeed finishes the reduction, clips and steps, as under DDP."""

    sharded = True

    def read_config(self) -> dict:
        path = self.cfg.run.deepspeed_config
        if path:
            try:
                conf = json.loads(Path(path).read_text())
            except OSError as e:
                raise InputError(f"run.deepspeed_config {path!r}: cannot read it: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise InputError(f"run.deepspeed_config {path!r}: not valid JSON ({e})") from None
        else:
            conf = {"zero_optimization": {"stage": 2}}
        return deepspeed_config(conf, self.cfg, path or "the default DeepSpeed config")

    def prepare(self, backbone: nn.Module) -> None:
        import deepspeed

        conf = self.read_config()
        with torch.no_grad():  # DeepSpeed views parameters as flat bytes: channels_last ones (nano's vision
            for p in backbone.parameters():  # tower) become contiguous; slower convolutions, the same values
                if p.stride() != p.new_empty(p.shape).stride():  # (is_contiguous() passes 1x1 channels_last)
                    p.data = p.data.clone(memory_format=torch.contiguous_format)
        self.params = trainable(backbone)
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay
        )
        self.model, self._zero, _, _ = deepspeed.initialize(
            model=backbone, optimizer=self.optimizer, config=conf, dist_init_required=False
        )

    no_sync = None

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)

    def step(self, max_norm: float) -> float:
        self.model.step()  # clips to gradient_clipping (= optim.max_grad_norm), steps, zeroes the gradients
        return float(self.model.get_global_grad_norm())

    def gather(self):
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        keep = self.accelerator.is_main_process
        weights, moments = {}, {}
        steps = [s["step"] for s in self.optimizer.state.values() if "step" in s]
        for n, p in self.params.items():  # each safe_get_full_* is a collective over the slices
            whole = safe_get_full_fp32_param(p)
            if keep:
                weights[n] = whole.cpu()
            if steps:  # the inner AdamW holds one state per flat slice; its step is every parameter's step
                for key in ("exp_avg", "exp_avg_sq"):
                    whole = safe_get_full_optimizer_state(p, key)
                    if keep:
                        moments[f"{n}::{key}"] = whole.cpu()
                if keep:
                    moments[f"{n}::step"] = torch.as_tensor(steps[0]).detach().cpu().clone()
        return weights, moments

    def scatter(self, weights, moments) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n])  # the module's copy (ZeRO 1/2 keep it whole) ...
                safe_set_full_fp32_param(p, weights[n].to(p.device, torch.float32))  # ... and the fp32 master
        if not moments:
            return
        step = next(v for k, v in moments.items() if k.endswith("::step"))
        for group in self.optimizer.param_groups:  # create the state AdamW would create lazily, then fill it
            for flat in group["params"]:
                self.optimizer.state[flat] = {
                    "step": step.clone(), "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)
                }  # fmt: skip
        self._zero._lazy_init_hp_params_optimizer_state()  # links each parameter to its slice of that state
        for n, p in self.params.items():
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, moments[f"{n}::{key}"].to(p.device, torch.float32), key)


def check_strategy(cfg: TrainConfig) -> None:
    """What can be checked before a model is loaded: the package a strategy needs, a DeepSpeed config."""
    if cfg.run.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise InputError("run.strategy=deepspeed needs DeepSpeed: "
                             "pip install --no-build-isolation deepspeed==0.19.8") from None  # fmt: skip
        ZeroStrategy(None, cfg).read_config()


def deepspeed_config(conf: dict, cfg: TrainConfig, where: str) -> dict:
    """Fill what mmemb's config decides (batch, precision, clipping) and refuse settings that contradict it."""
    conf = dict(conf)
    stage = (conf.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (1, 2):
        raise InputError(f"{where}: zero_optimization.stage {stage!r}: mmemb supports ZeRO stages 1 and 2; "
                         "for sharded parameters use run.strategy=fsdp")  # fmt: skip
    for key in ("optimizer", "scheduler"):
        if key in conf:
            raise InputError(
                f"{where}: remove {key!r}: mmemb's AdamW and schedule come from the optim section"
            )
    owned = {
        "train_micro_batch_size_per_gpu": cfg.batch.size,
        "gradient_accumulation_steps": 1,  # mmemb's loop accumulates batch.accumulation batches itself
        "gradient_clipping": cfg.optim.max_grad_norm,
        # backward() accumulates (GradCache chunks, accumulated batches); step() is the boundary
        "managed_gradient_accumulation": False,
    }
    for key, value in owned.items():
        if conf.get(key, "auto") not in ("auto", value):
            hint = {"train_micro_batch_size_per_gpu": "batch.size", "gradient_accumulation_steps":
                    "batch.accumulation (mmemb accumulates itself)", "gradient_clipping": "optim.max_grad_norm",
                    "managed_gradient_accumulation": "false (mmemb's loop calls step())"}[key]  # fmt: skip
            raise InputError(f"{where}: {key} is {conf[key]!r}; set it with {hint} (or 'auto')")
        conf[key] = value
    conf.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    precision = mixed_precision(cfg)
    for kind in ("bf16", "fp16"):
        wanted = precision == kind
        enabled = (conf.get(kind) or {}).get("enabled", "auto")
        if enabled not in ("auto", wanted):
            raise InputError(f"{where}: {kind}.enabled is {enabled!r} but run.mixed_precision is "
                             f"{cfg.run.mixed_precision!r} ({precision}); set them alike")  # fmt: skip
        conf[kind] = {**(conf.get(kind) or {}), "enabled": wanted}
    return conf


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor shard (a collective); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _shard_like(full: torch.Tensor, like) -> torch.Tensor:
    """`full` split like DTensor `like`. Every rank holds `full` (read from the checkpoint): no communication."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None
    )


def _local(full: torch.Tensor, like) -> torch.Tensor:
    return _shard_like(full, like).to_local()
