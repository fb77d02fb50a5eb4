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
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .backbones import build_backbone
from .backbones.base import Backbone, Prompts
from .config import BackboneConfig, EmbedderConfig
from .types import MODES, Embeddings, InputError, Sample

CONFIG_NAME = "embedder_config.json"


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

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **backbone_overrides) -> Embedder:
        """'nano' -> a fresh nano embedder; a folder saved by `save_pretrained` -> that embedder;
        any other folder or hub id -> a fresh embedder over that Qwen-VL model (hf backbone)."""
        path = Path(name_or_path)
        if (path / CONFIG_NAME).is_file():
            config = EmbedderConfig.load(path / CONFIG_NAME)
            backbone = build_backbone(config.backbone, saved=path)
            embedder = cls(backbone, config)
            backbone.load_weights(path)
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
            self.config.save(tmp / CONFIG_NAME)
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def fingerprint(self) -> str:
        """Hash of the config and every weight: two embedders with equal fingerprints embed identically."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        tensors = dict(self.backbone.named_parameters()) | dict(self.backbone.named_buffers())  # shared once
        for name, p in sorted(tensors.items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

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
        """Embed inputs in order. Batches are formed from length-sorted inputs (less padding); the vectors
        do not depend on the batching (left padding + mask-derived positions).

        max_new_tokens, temperature: gen only, override `config.generation` for this call.
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
        order = sorted(
            range(len(samples)),
            key=lambda i: self._cost(samples[i]) + (len(completions[i]) if completions else 0),
        )
        width = self.backbone.input_embeddings().weight.shape[1]
        vectors = np.zeros((len(samples), width), dtype=np.float32)
        texts, tokens, found = [""] * len(samples), [0] * len(samples), [True] * len(samples)
        seconds = [0.0] * len(samples)
        bar = _progress(len(samples), progress, f"embed ({mode})")
        self.backbone.eval()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [samples[i] for i in idx]
            start_time = time.perf_counter()
            rendered = [self.prompt(samples[i]) + (completions[i] if completions else "") for i in idx]
            prompts = self.backbone.prepare(batch, rendered)
            if mode == "disc" or completions is not None:
                hidden, _ = self.backbone.prefill(prompts, use_cache=False)
                vecs = hidden[:, -1]  # (B, D): the state at <disc_emb> (disc) or the completion's last token
            else:
                vecs, out_ids, ok = self.generate(
                    prompts, max_new_tokens=max_new_tokens, temperature=temperature
                )
                for j, i in enumerate(idx):
                    texts[i] = self.backbone.tokenizer.decode(out_ids[j], skip_special_tokens=False)
                    tokens[i], found[i] = len(out_ids[j]), ok[j]
            vecs = vecs.float()
            if self.config.normalize:
                vecs = torch.nn.functional.normalize(vecs, dim=-1)
            vectors[idx] = vecs.cpu().numpy()
            per_item = (time.perf_counter() - start_time) / len(idx)
            for i in idx:
                seconds[i] = per_item
            bar.update(len(idx))
        bar.close()
        if mode == "disc":
            return Embeddings(vectors, mode, seconds=seconds)
        if completions is not None:
            return Embeddings(vectors, mode, texts=completions, seconds=seconds)
        return Embeddings(vectors, mode, texts=texts, gen_tokens=tokens, gen_emb_found=found, seconds=seconds)

    def _cost(self, s: Sample) -> int:
        return len(s.text or "") + len(s.instruction or "") + 400 * len(s.media())

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompts,
        reuse_prefill: bool = True,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """Decode from the prefill's KV cache until each row feeds <gen_emb>; read the state there.

        Returns vectors (B, D), the generated token ids per row (ending with <gen_emb> when found), and per
        row whether <gen_emb> was reached. A row that hits max_new_tokens or an end-of-sequence token first
        falls back to the state at its last fed token and is flagged False. `<gen_emb>` is forced right after
        `</answer>` and after `<no_think>` (the no-think completion is `<no_think><gen_emb>`). `reuse_prefill=False` prefills a second time (only for the benchmark that shows why not).
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
        for _ in range(g.max_new_tokens if max_new_tokens is None else max_new_tokens):
            tok = sample_tokens(
                logits, g.temperature if temperature is None else temperature, g.top_p
            )  # (B,)
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
