"""`mmemb eval`'s settings as one typed tree, resolved like training's: defaults < YAML file (--config) <
flags < `key=value` overrides. The resolved tree is saved beside the outputs (eval_config.yaml), so a run
can be repeated from it alone: `mmemb eval --config runs/eval/X/eval_config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Tree, section, setting
from ..types import MODES, InputError

ANALYSES = ("oracle", "pass@k")


@dataclass
class EvalModelSection:
    name: str = setting(
        "nano", "'nano', 'nano-r1', a saved mmemb folder, a Qwen-VL folder or hub id, a PEFT adapter."
    )
    base: str = setting("", "A PEFT adapter's base model (default: its base_model_name_or_path).")
    profile: str = setting(
        "", "How a published checkpoint embeds (profiles.py); empty: detected, else mmemb's."
    )
    dtype: str = setting("", "auto | float32 | bfloat16 | float16; empty: the model's saved setting.")


@dataclass
class EvalDataSection:
    tasks: str = setting("mmeb-mini", "mmeb-mini | mmeb-v2 | MMEB-V2 dataset names, comma-separated.")
    root: str = setting("", "Data folder (MMEB-V2 as downloaded; mmeb-mini: built on first use if empty).")
    hub_cache: str = setting(
        "", "MMEB-V2: where the annotation datasets were downloaded (default: HF cache)."
    )
    limit: int = setting(0, "First N test queries per task (smoke runs; 0: all).")


@dataclass
class EvalRunSection:
    qry_mode: str = setting("disc", "How queries are embedded: disc, gen, think, nothink, adaptive.")
    tgt_mode: str = setting(
        "", "How candidates are embedded (empty: disc for disc, else nothink where it exists)."
    )
    batch_size: int = setting(16, "Items per model batch.")
    dimensions: int = setting(
        0, "Matryoshka: score the first N entries of every vector, renormalised (0: the full width)."
    )
    max_new_tokens: int = setting(0, "Generating modes: cap on new tokens (0: the model's own).")
    analysis: list = setting([], "Extra runs: oracle (best of disc and gen per query), pass@k.")
    samples: int = setting(4, "k for pass@k.")
    temperature: float = setting(0.7, "Sampling temperature for pass@k.")
    allow_any_mode_pair: bool = setting(False, "Run a mode pair the model's config does not list as valid.")
    out: str = setting("", "Output folder (empty: runs/eval/<model>-<tasks>).")
    cache: str = setting("", "Embedding cache folder (empty: ~/.cache/mmemb/embeddings).")


@dataclass
class EvalConfig(Tree):
    model: EvalModelSection = section(EvalModelSection, "What to evaluate.")
    data: EvalDataSection = section(EvalDataSection, "On which tasks.")
    run: EvalRunSection = section(EvalRunSection, "Modes, batching, outputs.")

    def out_dir(self) -> Path:
        name = Path(self.model.name).name or self.model.name
        return (
            Path(self.run.out)
            if self.run.out
            else Path("runs") / "eval" / f"{name}-{self.data.tasks.replace(',', '+')[:60]}"
        )


def check_eval(cfg: EvalConfig, where: str = "config") -> EvalConfig:
    r = cfg.run
    for key, mode in (("run.qry_mode", r.qry_mode), ("run.tgt_mode", r.tgt_mode)):
        if mode and mode not in MODES:
            raise InputError(f"{where}: {key} {mode!r}: choose one of {list(MODES)}")
    bad = [a for a in r.analysis if a not in ANALYSES]
    if bad:
        raise InputError(f"{where}: run.analysis {bad}: choose from {', '.join(ANALYSES)}")
    for key, value in (("run.batch_size", r.batch_size), ("run.samples", r.samples)):
        if value < 1:
            raise InputError(f"{where}: {key} must be >= 1 (got {value})")
    if cfg.data.limit < 0 or r.max_new_tokens < 0:
        raise InputError(f"{where}: data.limit and run.max_new_tokens must be >= 0")
    if cfg.model.dtype and cfg.model.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"{where}: model.dtype {cfg.model.dtype!r}: auto, float32, bfloat16 or float16")
    return cfg
