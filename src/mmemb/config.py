"""One typed config tree. Every field has help text (`field(metadata={"help": ...})`).

`EmbedderConfig` holds every setting that changes inference; it is saved as `embedder_config.json` beside
the weights, so `from_pretrained` needs nothing else. `from_dict` is strict: an unknown key or a wrong type
is an error that names the key, never a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import atomic_json, atomic_write
from .types import InputError

CONFIG_VERSION = 1


def setting(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    """A nested section of a typed tree: the dataclass `cls`, with its help text."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class BackboneConfig:
    kind: str = setting(
        "nano", "Backbone implementation: 'nano' (embedded default) or 'hf' (Qwen-VL family)."
    )
    source: str = setting("", "hf: hub id or local folder of an image-text-to-text model. nano: unused.")
    family: str = setting(
        "", "hf: model family (qwen2_vl, qwen2_5_vl, qwen3_vl); read from the model config if empty."
    )
    dtype: str = setting(
        "auto",
        "Compute dtype: auto | float32 | bfloat16 | float16. auto = bfloat16 where the hardware has it (a CUDA "
        "GPU with bf16, a CPU with avx512_bf16 or AMX), else float32; printed when the model loads. Training "
        "keeps float32 master weights (precision.py).",
    )
    max_length: int = setting(
        2048, "Longest prompt in tokens (text + visual tokens); longer inputs are an error."
    )
    num_frames: int = setting(8, "Video: frames sampled evenly per clip, first to last (VLM2Vec's indices).")
    max_image_pixels: int = setting(
        40_000_000, "Refuse images with more pixels than this (decompression-bomb guard)."
    )
    # nano only
    visual_tokens: int = setting(
        4, "nano: visual tokens per image (a square number: the 7x7 map is pooled to it)."
    )
    image_size: int = setting(224, "nano: vision encoder input size.")
    lora_r: int = setting(8, "nano: LoRA rank on the language model's attention projections (0 = no LoRA).")
    lora_alpha: int = setting(16, "nano: LoRA alpha.")
    lora_targets: list = setting(["q_proj", "k_proj", "v_proj", "o_proj"], "nano: LoRA target module names.")
    seed: int = setting(0, "nano: seed for the projector's initialisation.")
    # hf only
    min_pixels: int = setting(0, "hf: image processor min_pixels (0 = the processor's own default).")
    max_pixels: int = setting(0, "hf: image processor max_pixels (0 = the processor's own default).")
    base: str = setting(
        "",
        "hf: when `source` is a PEFT adapter folder (adapter_config.json), the base model to load it on "
        "(hub id or folder; default: the adapter's base_model_name_or_path). The adapter is merged at load.",
    )


@dataclass
class TokensConfig:
    disc_emb: str = setting("<disc_emb>", "Ends the prompt; the disc embedding is the hidden state here.")
    gen_emb: str = setting(
        "<gen_emb>", "Ends generation; the gen embedding is the hidden state when it is fed."
    )
    think_open: str = setting("<think>", "Opens the reasoning.")
    think_close: str = setting("</think>", "Closes the reasoning.")
    answer_open: str = setting("<answer>", "Opens the summary.")
    answer_close: str = setting("</answer>", "Closes the summary; `<gen_emb>` is forced right after it.")
    no_think: str = setting("<no_think>", "First generated token when the model chooses not to reason.")

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


@dataclass
class PromptConfig:
    template: str = setting(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{media}{instruction}{text}<|im_end|>\n"
        "<|im_start|>assistant\n{disc_emb}",
        "Prompt layout (ChatML). It must end with {disc_emb}: disc is read there and generation goes on "
        "from the same prefill.",
    )
    system: str = setting(
        "Embed the input. To reason first, think in <think></think> and summarise in <answer></answer>.",
        "System message (short: it is paid for on every input).",
    )
    default_instruction: str = setting("", "Instruction used when an item has none.")
    instruction_sep: str = setting("\n", "Put between the instruction and the text when both are present.")


@dataclass
class GenerationConfig:
    max_new_tokens: int = setting(64, "gen: most tokens generated before the embedding is read.")
    temperature: float = setting(0.0, "gen: 0 = greedy (deterministic embeddings); > 0 samples.")
    top_p: float = setting(1.0, "gen: nucleus sampling threshold when temperature > 0.")
    guard: bool = setting(
        False,
        "think: keep a reasoning row in the format <think>…</think><answer>…</answer><gen_emb> (decode.py): "
        "a stop or misplaced tag closes the current part, and the budget leaves room to close both.",
    )


@dataclass
class PolicyConfig:
    budgets: list = setting(
        [0, 64],
        "adaptive: the policy's actions as reasoning-token caps. The first is 0 (no reasoning: "
        "<no_think><gen_emb>); the others reason with at most that many generated tokens. [0, 64] is "
        "MMEmb-R1's binary decision; [0, 24, 64] adds a short budget.",
    )
    temperature: float = setting(0.0, "adaptive: 0 = take the most likely action; > 0 samples the action.")
    trained: str = setting(
        "", "How the head was made: empty = untrained (the LM's own choice), else the policy run's settings."
    )

    def action_names(self) -> list[str]:
        if len(self.budgets) == 2:
            return ["no_think", "think"]
        return ["no_think"] + [f"think<={b}" for b in self.budgets[1:]]

    def check(self, where: str = "policy") -> None:
        b = self.budgets
        if (
            len(b) < 2
            or b[0] != 0
            or any(not isinstance(x, int) or x < 1 for x in b[1:])
            or sorted(set(b[1:])) != b[1:]
        ):
            raise InputError(
                f"{where}.budgets {b!r}: give 0 (no reasoning) then increasing token caps >= 1, e.g. [0, 64]"
            )


@dataclass
class EmbedderConfig:
    version: int = setting(CONFIG_VERSION, "Config format version.")
    backbone: BackboneConfig = section(BackboneConfig, "Backbone settings.")
    tokens: TokensConfig = section(TokensConfig, "Special tokens.")
    prompt: PromptConfig = section(PromptConfig, "Prompt templates.")
    generation: GenerationConfig = section(GenerationConfig, "gen settings.")
    policy: PolicyConfig = section(PolicyConfig, "Adaptive mode: the actions the policy head picks from.")
    profile: str = setting(
        "mmemb",
        "How the model embeds (profiles.py): 'mmemb' (this prompt config, mmemb's tokens) or a published "
        "family's own rules: 'ume-r1', 'vlm2vec-v2', 'qwen3-vl-embedding'.",
    )
    pooling: str = setting(
        "token", "Where vectors are read: 'token' = last-layer state at <disc_emb> / <gen_emb>."
    )
    normalize: bool = setting(True, "L2-normalise vectors.")
    matryoshka_dims: list = setting(
        [],
        "Widths below the full one that stage 1 trained as nested prefixes (loss.matryoshka_dims): `dimensions` "
        "may ask for these (the prefix, renormalised). Empty: full-width vectors only.",
    )
    valid_mode_pairs: list = setting(
        [["disc", "disc"], ["gen", "gen"]],
        "Query/target pairs of vector spaces that are comparable: 'disc' (disc mode) and 'gen' (gen, think, "
        "nothink, adaptive: every mode read at <gen_emb>). A cross-mode training term adds more.",
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        atomic_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> EmbedderConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: cannot read the embedder config: {e}") from None
        config = from_dict(cls, data, where=str(path))
        config.policy.check(f"{path}: policy")
        return config


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, recursively, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return value
    base = origin or tp
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, str, bool, list, dict) and not (
        isinstance(value, base) and not (base is int and isinstance(value, bool))
    ):
        raise InputError(f"{where}: expected {base.__name__}, got {type(value).__name__} ({value!r})")
    return value


# ---- typed trees from YAML + overrides (training, eval) ------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: PyYAML (YAML 1.1) reads `1e-4` as a string (learning rates are written that way)
    and `no` / `yes` / `on` / `off` as booleans (`run.mixed_precision=no` must stay the string 'no')."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+)$"),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class Tree:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_tree(
    cls, check_fn, path: Path | None, overrides: list[str] | tuple[str, ...], base: Tree | None = None
):
    """One config mechanism for every stage: the typed tree `cls` from its defaults (or `base`) < the YAML
    file at `path` < `key=value` overrides (values parsed as YAML: 1e-4, true, [a, b]), checked by
    `check_fn(cfg, where)`. Unknown keys and wrong types are errors naming the key and the file."""
    data: dict = (base or cls()).to_dict()
    where = "defaults" if base is None else "settings"
    if path is not None:
        path = Path(path)
        try:
            loaded = _yaml(path.read_text()) or {}
        except OSError as e:
            raise InputError(f"{path}: cannot read the config: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({e})") from None
        from_dict(cls, loaded, where=str(path))  # strict: unknown keys and wrong types named
        data = _merge(data, loaded)
        where = str(path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-4")
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise InputError(
                    f"override {item!r}: unknown key {'.'.join(parts[: i + 1])!r}; known here: {known}"
                )
            if i < len(parts) - 1:
                node = node[part]
        try:
            node[parts[-1]] = _yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
        where = f"{where} + overrides"
    return check_fn(from_dict(cls, data, where=where), where)


def _merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def save_tree(cfg: Tree, path: Path) -> None:
    """The resolved tree as YAML (loads back with load_tree to the same config)."""
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---- flags over a typed tree (eval, reason, reproduce) --------------------------------------------
def tree_field(cls, key: str) -> dataclasses.Field:
    """The dataclass field behind a dotted key of the typed tree `cls`, e.g. "select.delta"."""
    *parents, last = key.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    return next(f for f in dataclasses.fields(cls) if f.name == last)


def add_flags(parser, cls, flags: dict[str, str]) -> None:
    """One flag per `flag -> key` of the typed tree `cls`. The type, help and default come from the tree's
    field, the one place they are written; an unset flag is None and leaves the config's value. A bool
    flag named --no-X sets False, any other sets True."""
    for flag, key in flags.items():
        f = tree_field(cls, key)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata['help']} (default {default!r}; {key})".replace("%", "%%")
        if isinstance(default, bool):
            const = not flag.startswith("--no-")
            parser.add_argument(flag, action="store_const", const=const, default=None, help=text)
        else:
            parser.add_argument(flag, type=type(default), default=None, metavar=flag[2:].upper(), help=text)


def resolve_tree(cls, check_fn, path: Path | None, args, flags: dict[str, str], overrides=(), base=None):
    """defaults (or `base`) < the YAML file at `path` < the flags given in `args` (`flag -> key`, as for
    add_flags; None = not given) < `key=value` overrides: the order of every stage's settings."""
    data = load_tree(cls, check_fn, path, (), base=base).to_dict()
    for flag, key in flags.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = str(value) if isinstance(value, Path) else value
    given = from_dict(cls, data, where="flags")
    return load_tree(cls, check_fn, None, overrides, base=check_fn(given, "flags"))
