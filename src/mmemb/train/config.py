"""Training configuration: one typed tree, resolved as defaults < YAML file < command-line `key=value`.

    cfg = load_train_config(Path("configs/nano.yaml"), ["optim.lr=1e-4", "batch.size=16"])

Every field has help text. An unknown key, a wrong type or a missing file is an error that names the key
(and the file) before any compute starts. The resolved tree is saved beside each checkpoint
(`save_train_config`), so a run can be repeated or resumed from it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import BackboneConfig, Tree, load_tree, save_tree, section, setting
from ..types import InputError

VARIANTS = ("none", "all", "selected")
STRATEGIES = ("ddp", "fsdp", "deepspeed")


@dataclass
class ModelSection:
    init: str = setting(
        "nano", "Start from: 'nano', a Qwen-VL folder or hub id (hf), or a folder saved by mmemb."
    )
    backbone: BackboneConfig = section(
        BackboneConfig, "Backbone settings for a fresh model (ignored when `init` is a saved mmemb folder)."
    )


@dataclass
class PairsSection:
    """Where training pairs come from (`data.pairs.read_pairs`); both stages share these keys."""

    source: str = setting(
        "mmeb-mini", "Training pairs: mmeb-mini, a mini-layout folder, MMEB-train rows, UME-R1 SFT JSON."
    )
    split: str = setting("train", "Split of a mini-layout source.")
    tasks: list = setting([], "Task names to keep (empty: all).")
    limit_per_task: int = setting(0, "At most this many pairs per task (0: all).")
    media_root: str = setting("", "Media folder for MMEB-train / UME-R1 files (default: the file's folder).")


@dataclass
class DataSection(PairsSection):
    selection: str = setting("", "selection.jsonl from `mmemb reason select` (variant 'selected').")
    candidates: str = setting("", "Candidates file from `mmemb reason generate` (variant 'all').")
    variant: str = setting(
        "selected",
        "Reasoning ablation: 'none' (no reasoning: every pair trains the no-think completion), 'all' (every "
        "valid candidate, no selection), 'selected' (the selection's rationale; no-think pairs train no-think).",
    )
    hard_negatives: int = setting(
        0, "Hard negatives per pair taken from the data (0: in-batch negatives only)."
    )


@dataclass
class LossSection:
    temperature: float = setting(0.02, "InfoNCE temperature (UME-R1 and VLM2Vec: 0.02).")
    disc: float = setting(1.0, "Weight of the symmetric InfoNCE on disc embeddings.")
    gen: float = setting(1.0, "Weight of the symmetric InfoNCE on gen embeddings (read at <gen_emb>).")
    lm: float = setting(
        1.0, "Weight of the next-token loss on the completion tokens (rationale or no-think)."
    )
    cross_mode: float = setting(
        0.0, "Weight of an InfoNCE between gen queries and disc targets (shared space)."
    )
    symmetric: bool = setting(True, "InfoNCE in both directions (query->target and target->query).")
    matryoshka_dims: list = setting(
        [],
        "Matryoshka: widths below the full one (e.g. [64, 128, 256]) whose prefixes, renormalised, are trained "
        "too: every InfoNCE term becomes its mean over the full width and these. Saved in the model's config; "
        "`dimensions` then accepts them.",
    )


@dataclass
class OptimSection:
    lr: float = setting(1e-4, "Peak learning rate (AdamW).")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    warmup_ratio: float = setting(0.03, "Share of steps with linear warm-up.")
    scheduler: str = setting("cosine", "Learning-rate schedule after warm-up: cosine | linear | constant.")
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this (0: no clipping).")


@dataclass
class BatchSection:
    size: int = setting(32, "Contrastive batch per device: the pairs whose embeddings meet in one InfoNCE.")
    chunk: int = setting(
        8, "GradCache sub-batch (memory is that of one chunk); 0 = no GradCache (whole batch at once)."
    )
    accumulation: int = setting(1, "Optimizer step every this many contrastive batches.")


@dataclass
class RunSection:
    output: str = setting(
        "runs/train/stage1", "Output folder: checkpoints/, final/, tensorboard/, config.yaml."
    )
    max_steps: int = setting(200, "Optimizer steps.")
    save_every: int = setting(50, "Checkpoint every this many steps (and at the end).")
    keep_checkpoints: int = setting(2, "Keep only the newest this many checkpoints.")
    log_every: int = setting(5, "Console and TensorBoard logging interval in steps.")
    seed: int = setting(0, "Seed for data order, dropout and sampling.")
    mixed_precision: str = setting(
        "auto",
        "Autocast precision of the training forward: auto (the model's backbone.dtype, resolved on this "
        "hardware) | no | bf16 | fp16. Trainable weights and AdamW state stay float32.",
    )
    tensorboard: bool = setting(True, "Write TensorBoard scalars under output/tensorboard.")
    strategy: str = setting(
        "ddp",
        "How processes share the model: 'ddp' (one process, or data-parallel replicas), 'fsdp' (parameters, "
        "gradients and optimizer moments sharded with torch FSDP2), 'deepspeed' (ZeRO, per run.deepspeed_config).",
    )
    deepspeed_config: str = setting(
        "",
        "DeepSpeed JSON config for run.strategy=deepspeed (empty: ZeRO stage 2); batch and precision come "
        "from this config's batch and run sections.",
    )


@dataclass
class TrainConfig(Tree):
    model: ModelSection = section(ModelSection, "What to train.")
    data: DataSection = section(DataSection, "Training pairs and reasoning.")
    loss: LossSection = section(LossSection, "Loss terms and weights.")
    optim: OptimSection = section(OptimSection, "Optimizer and schedule.")
    batch: BatchSection = section(BatchSection, "Batching.")
    run: RunSection = section(RunSection, "Outputs, length, logging.")


@dataclass
class PolicyDataSection(PairsSection):
    selection: str = setting(
        "", "selection.jsonl from `mmemb reason select`: its think/no-think labels are the cold start."
    )
    negatives: int = setting(
        15, "Candidates besides the target a rollout is ranked against (the pair's own, then mined)."
    )


@dataclass
class PolicySection:
    budgets: list = setting(
        [0, 64], "Actions as reasoning-token caps: 0 = no reasoning, then increasing caps."
    )
    lam: float = setting(0.0, "λ: the price of reasoning, subtracted from the reward per unit of cost.")
    cost: str = setting("call", "Unit of cost: 'call' (1 per invocation) or 'token' (per generated token).")
    group: int = setting(8, "G: rollouts per query; advantages are normalised within each group.")
    temperature: float = setting(1.0, "Sampling temperature of the action during rollouts.")
    format_weight: float = setting(
        1.0,
        "Weight of the format reward (UME-R1: 1). The policy does not train the text, so this is a fixed "
        "penalty on malformed reasoning; 0 judges reasoning by retrieval alone.",
    )


@dataclass
class PolicyOptimSection:
    lr: float = setting(1e-2, "Adam learning rate of the policy head.")
    steps: int = setting(300, "GRPO steps (one batch of queries, G rollouts each, per step).")
    batch: int = setting(32, "Queries per step.")
    updates: int = setting(
        2, "Optimisation passes over each batch of rollouts (μ; > 1 makes the clip matter)."
    )
    eps_low: float = setting(0.2, "Lower clip of the probability ratio.")
    eps_high: float = setting(0.28, "Upper clip (clip-higher, as UME-R1).")
    beta: float = setting(0.04, "Weight of the k3 KL to the reference (the cold-start policy).")
    cold_start_steps: int = setting(100, "Cross-entropy steps on the selection's labels first (0: none).")
    cold_start_lr: float = setting(1e-2, "Adam learning rate of the cold start.")


@dataclass
class PolicyRunSection:
    output: str = setting(
        "runs/train/policy", "Output folder: final/ (the embedder + policy), log.jsonl, ..."
    )
    seed: int = setting(0, "Seed for the order of queries and the sampled actions.")
    log_every: int = setting(25, "Console and TensorBoard logging interval in steps.")
    tensorboard: bool = setting(True, "Write TensorBoard scalars under output/tensorboard.")
    batch_size: int = setting(16, "Embedding batch when computing the rollouts' outcomes.")


@dataclass
class PolicyTrainConfig(Tree):
    model: ModelSection = section(ModelSection, "The (stage-1) embedder.")
    data: PolicyDataSection = section(PolicyDataSection, "Queries.")
    policy: PolicySection = section(PolicySection, "Actions and reward.")
    optim: PolicyOptimSection = section(PolicyOptimSection, "GRPO.")
    run: PolicyRunSection = section(PolicyRunSection, "Outputs.")


def check_policy(cfg: PolicyTrainConfig, where: str = "config") -> PolicyTrainConfig:
    from ..config import PolicyConfig

    PolicyConfig(budgets=cfg.policy.budgets).check(f"{where}: policy")
    if cfg.policy.cost not in ("call", "token"):
        raise InputError(f"{where}: policy.cost {cfg.policy.cost!r}: choose call or token")
    for name, value in (("policy.group", cfg.policy.group), ("optim.steps", cfg.optim.steps),
                        ("optim.batch", cfg.optim.batch), ("optim.updates", cfg.optim.updates),
                        ("run.log_every", cfg.run.log_every), ("run.batch_size", cfg.run.batch_size)):  # fmt: skip
        if value < 1:
            raise InputError(f"{where}: {name} must be >= 1 (got {value})")
    if cfg.policy.group < 2:
        raise InputError(f"{where}: policy.group must be >= 2 (advantages compare rollouts of one query)")
    if cfg.policy.lam < 0 or cfg.policy.temperature <= 0 or cfg.policy.format_weight < 0:
        raise InputError(
            f"{where}: policy.lam and policy.format_weight must be >= 0, and policy.temperature > 0"
        )
    if cfg.optim.cold_start_steps < 0 or cfg.data.negatives < 1:
        raise InputError(f"{where}: optim.cold_start_steps must be >= 0 and data.negatives >= 1")
    return cfg


def check(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Value checks a type cannot express."""
    if cfg.data.variant not in VARIANTS:
        raise InputError(f"{where}: data.variant {cfg.data.variant!r}: choose one of {list(VARIANTS)}")
    if cfg.optim.scheduler not in ("cosine", "linear", "constant"):
        raise InputError(
            f"{where}: optim.scheduler {cfg.optim.scheduler!r}: choose cosine, linear or constant"
        )
    if cfg.run.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise InputError(
            f"{where}: run.mixed_precision {cfg.run.mixed_precision!r}: choose auto, no, bf16 or fp16"
        )
    for name, value in (("batch.size", cfg.batch.size), ("batch.accumulation", cfg.batch.accumulation),
                        ("run.max_steps", cfg.run.max_steps), ("run.save_every", cfg.run.save_every),
                        ("run.log_every", cfg.run.log_every), ("run.keep_checkpoints", cfg.run.keep_checkpoints)):  # fmt: skip
        if value < 1:
            raise InputError(f"{where}: {name} must be >= 1 (got {value})")
    if cfg.batch.chunk < 0 or (cfg.batch.chunk and cfg.batch.size % cfg.batch.chunk):
        raise InputError(
            f"{where}: batch.chunk ({cfg.batch.chunk}) must be 0 or divide batch.size ({cfg.batch.size})"
        )
    if cfg.loss.temperature <= 0:
        raise InputError(f"{where}: loss.temperature must be > 0")
    if cfg.run.strategy not in STRATEGIES:
        raise InputError(f"{where}: run.strategy {cfg.run.strategy!r}: choose one of {list(STRATEGIES)}")
    if cfg.run.deepspeed_config and cfg.run.strategy != "deepspeed":
        raise InputError(f"{where}: run.deepspeed_config is set but run.strategy is {cfg.run.strategy!r}; "
                         "set run.strategy=deepspeed")  # fmt: skip
    if cfg.run.strategy != "ddp" and mixed_precision(cfg) == "fp16":
        raise InputError(
            f"{where}: run.mixed_precision fp16 is supported with run.strategy=ddp only; use bf16"
        )
    return cfg


def mixed_precision(cfg: TrainConfig) -> str:
    """run.mixed_precision with `auto` resolved: the dtype setting of the model being trained (its saved
    embedder_config.json, else model.backbone) on this machine's device -> 'bf16' | 'fp16' | 'no'."""
    if cfg.run.mixed_precision != "auto":
        return cfg.run.mixed_precision
    import json

    import torch

    from ..embedder import CONFIG_NAME, PRETRAINED
    from ..precision import resolve

    setting = cfg.model.backbone.dtype
    saved = PRETRAINED.get(cfg.model.init, Path(cfg.model.init)) / CONFIG_NAME
    if saved.is_file():
        setting = json.loads(saved.read_text()).get("backbone", {}).get("dtype", "float32")
    dtype, _ = resolve(setting, "cuda" if torch.cuda.is_available() else "cpu")
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def load_train_config(
    path: Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: TrainConfig | None = None
) -> TrainConfig:
    """defaults (or `base`) < YAML at `path` < `key=value` overrides (values parsed as YAML: 1e-4, true, [a, b])."""
    return load_tree(TrainConfig, check, path, overrides, base=base)


def load_policy_config(
    path: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: PolicyTrainConfig | None = None,
) -> PolicyTrainConfig:
    """The policy stage's config, resolved like `load_train_config`."""
    return load_tree(PolicyTrainConfig, check_policy, path, overrides, base=base)


def save_train_config(cfg: TrainConfig | PolicyTrainConfig, path: Path) -> None:
    save_tree(cfg, path)
