"""The settings of every `mmemb reason` command as one typed tree, resolved like training's and eval's:
defaults < a YAML file (--config) < the flags given < `key=value` overrides.

One file can drive the whole chain (generate, then select, inspect, diagnose), since the sections name
what each command reads: `data` is shared (the pairs and their candidates file), `generate` the teacher,
`score` the scorer model that select, inspect and diagnose embed with, and one section per command.
Each command saves the resolved tree beside its outputs, so it reruns from that file alone:

    generate   CANDIDATES.generate_config.yaml beside the candidates file (CANDIDATES.jsonl)
    select     OUT/select_config.yaml         (with selection.jsonl, summary.json, utilities.png)
    inspect    OUT/inspect_config.yaml        (with --out)
    diagnose   OUT/diagnose_config.yaml       (with --out)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Tree, section, setting
from ..types import InputError

RULES = ("hard", "soft", "all")
# the utilities scoring.py computes (a name here, so the CLI can check it before loading numpy and a model)
UTILITIES = ("pair", "contrastive", "contrastive_swapped", "without", "swapped", "absolute")


@dataclass
class ReasonDataSection:
    source: str = setting(
        "mmeb-mini",
        "Training pairs: mmeb-mini, a mini-layout folder, an MMEB-train file (.jsonl/.parquet) or UME-R1 SFT JSON.",
    )
    split: str = setting("train", "Split of the pairs.")
    tasks: str = setting("", "Comma-separated task names (empty: all).")
    limit: int = setting(0, "At most N pairs per task, hash-sampled (0: all).")
    skip: int = setting(
        0, "First drop the pairs `limit` N would pick per task: held-out pairs of a model trained on N."
    )
    media_root: str = setting("", "Media folder for MMEB-train / UME-R1 files.")
    candidates: str = setting(
        "", "The candidates file (.jsonl): generate appends to it; select, inspect, diagnose read it."
    )

    def task_list(self) -> list[str] | None:
        return [t.strip() for t in self.tasks.split(",") if t.strip()] or None


@dataclass
class ReasonGenerateSection:
    teacher: str = setting(
        "nano",
        "hints (rationales written from the privileged hints, no model) | nano | local:MODEL (a model run here: "
        "'nano', an mmemb folder, a Qwen-VL folder or hub id) | openai:MODEL (an OpenAI-compatible server at "
        "base_url, e.g. vLLM) | file:PATH (import rationales: a candidates file or UME-R1 SFT JSON).",
    )
    samples: int = setting(4, "Candidate rationales per query (the K samples).")
    temperature: float = setting(0.7, "Sampling temperature.")
    top_p: float = setting(0.9, "Nucleus sampling threshold.")
    batch_size: int = setting(16, "Requests per teacher call (and per fsync).")
    seed: int = setting(0, "Sampling seed.")
    max_think_tokens: int = setting(48, "Local teachers: tokens of reasoning.")
    max_answer_tokens: int = setting(24, "Local teachers: tokens of the answer.")
    base_url: str = setting("http://127.0.0.1:8000/v1", "OpenAI teachers: the server.")
    max_tokens: int = setting(256, "OpenAI teachers: tokens per completion.")
    concurrency: int = setting(8, "OpenAI teachers: requests in flight.")
    timeout: float = setting(60.0, "OpenAI teachers: seconds per request.")
    retries: int = setting(3, "OpenAI teachers: attempts per request.")


@dataclass
class ReasonScoreSection:
    model: str = setting(
        "nano", "The scorer embedder: 'nano', a saved mmemb folder, a Qwen-VL folder or hub id."
    )
    batch_size: int = setting(16, "Items per model batch.")
    cache: str = setting("", "Embedding cache folder (empty: ~/.cache/mmemb/embeddings).")


@dataclass
class ReasonSelectSection:
    utility: str = setting("pair", f"Counterfactual utility: {', '.join(UTILITIES)} (docs/reasoning.md).")
    rule: str = setting("hard", "hard (the best candidate) | soft (softmax weights) | all (no selection).")
    delta: float = setting(0.0, "The best utility must exceed this, else the pair is labelled no-think.")
    soft_temperature: float = setting(0.05, "Soft rule: the softmax temperature.")
    negatives: int = setting(15, "Contrastive utilities: negatives per pair (the data's, then mined).")
    loss_temperature: float = setting(
        0.02, "Contrastive utilities: the InfoNCE temperature (training's loss.temperature)."
    )
    seed: int = setting(0, "Order in which swapped-control donors are drawn.")
    out: str = setting("", "Folder for selection.jsonl, summary.json, utilities.png.")


@dataclass
class ReasonInspectSection:
    selection: str = setting("", "selection.jsonl from `reason select` (utilities, examples).")
    n: int = setting(64, "Pairs for the sensitivity measurement.")
    examples: int = setting(3, "Kept and rejected examples shown.")
    out: str = setting("", "Write inspect.json here too (empty: print only).")


@dataclass
class ReasonDiagnoseSection:
    own: bool = setting(True, "Also the model's own rationales (think mode).")
    max_new_tokens: int = setting(64, "Own rationales: token budget.")
    out: str = setting("", "Write diagnose.json here too (empty: print only).")


@dataclass
class ReasonConfig(Tree):
    data: ReasonDataSection = section(ReasonDataSection, "Pairs, candidates.")
    generate: ReasonGenerateSection = section(ReasonGenerateSection, "reason generate: the teacher.")
    score: ReasonScoreSection = section(ReasonScoreSection, "select, inspect, diagnose: the scorer.")
    select: ReasonSelectSection = section(ReasonSelectSection, "reason select.")
    inspect: ReasonInspectSection = section(ReasonInspectSection, "reason inspect.")
    diagnose: ReasonDiagnoseSection = section(ReasonDiagnoseSection, "reason diagnose.")


def check_reason(cfg: ReasonConfig, where: str = "config") -> ReasonConfig:
    g, s = cfg.generate, cfg.select
    positive = {
        "generate.samples": g.samples, "generate.batch_size": g.batch_size, "generate.concurrency": g.concurrency,
        "generate.retries": g.retries, "score.batch_size": cfg.score.batch_size, "inspect.n": cfg.inspect.n,
        "diagnose.max_new_tokens": cfg.diagnose.max_new_tokens,
    }  # fmt: skip
    for key, value in positive.items():
        if value < 1:
            raise InputError(f"{where}: {key} must be >= 1 (got {value})")
    for key, value in (
        ("data.limit", cfg.data.limit),
        ("data.skip", cfg.data.skip),
        ("select.negatives", s.negatives),
    ):
        if value < 0:
            raise InputError(f"{where}: {key} must be >= 0 (got {value})")
    if s.utility not in UTILITIES:
        raise InputError(f"{where}: select.utility {s.utility!r}: choose one of {list(UTILITIES)}")
    if s.rule not in RULES:
        raise InputError(f"{where}: select.rule {s.rule!r}: choose one of {list(RULES)}")
    for key, value in (
        ("select.soft_temperature", s.soft_temperature),
        ("select.loss_temperature", s.loss_temperature),
    ):
        if value <= 0:
            raise InputError(f"{where}: {key} must be > 0 (got {value})")
    return cfg


def required(cfg: ReasonConfig, command: str, keys: dict[str, str]) -> None:
    """Refuse a command whose required settings (key -> the flag that sets it) are empty."""
    missing = [f"{key} ({flag})" for key, flag in keys.items() if not _get(cfg, key)]
    if missing:
        raise InputError(f"mmemb reason {command}: set {', '.join(missing)}, by flag, --config or key=value")


def saved_path(cfg: ReasonConfig, command: str) -> Path | None:
    """Where `command` saves the resolved settings (module docstring); None when it writes no folder."""
    if command == "generate":
        candidates = Path(cfg.data.candidates)
        return candidates.with_name(candidates.stem + ".generate_config.yaml")
    out = _get(cfg, f"{command}.out")
    return Path(out) / f"{command}_config.yaml" if out else None


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
